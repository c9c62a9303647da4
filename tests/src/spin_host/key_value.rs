//! `fermyon:spin/key-value@2.0.0` as Spin answers a component that was not
//! granted a store: every open fails with `no-such-store`, so the adapter
//! runs without its node-local tier (every lookup goes to the database).
//! A real `spin up` of `spin.toml` grants the `default` store.

use wasmtime::component::Resource;

use super::state::bindings::fermyon::spin::key_value::{self as spin, Error, Store};
use super::SpinState;

fn no_store() -> Error {
    Error::NoSuchStore
}

impl spin::Host for SpinState {}

impl spin::HostStore for SpinState {
    async fn open(&mut self, _label: String) -> Result<Resource<Store>, Error> {
        Err(no_store())
    }

    async fn get(&mut self, _store: Resource<Store>, _key: String) -> Result<Option<Vec<u8>>, Error> {
        Err(no_store())
    }

    async fn set(&mut self, _store: Resource<Store>, _key: String, _value: Vec<u8>) -> Result<(), Error> {
        Err(no_store())
    }

    async fn delete(&mut self, _store: Resource<Store>, _key: String) -> Result<(), Error> {
        Err(no_store())
    }

    async fn exists(&mut self, _store: Resource<Store>, _key: String) -> Result<bool, Error> {
        Err(no_store())
    }

    async fn get_keys(&mut self, _store: Resource<Store>) -> Result<Vec<String>, Error> {
        Err(no_store())
    }

    async fn drop(&mut self, _store: Resource<Store>) -> wasmtime::Result<()> {
        Ok(())
    }
}
