//! `wasi:keyvalue@0.2.0-draft2` (`store`, `batch`) as Spin answers a
//! component that was not granted a store: every open fails with
//! `no-such-store`, so the adapter runs without its node-local tier (every
//! lookup goes to the database). A real `spin up` of `spin.toml` grants
//! the `default` store.

use wasmtime::component::Resource;

use super::state::bindings::wasi::keyvalue::batch;
use super::state::bindings::wasi::keyvalue::store::{self, Bucket, Error, KeyResponse};
use super::SpinState;

fn no_store() -> Error {
    Error::NoSuchStore
}

impl store::Host for SpinState {
    async fn open(&mut self, _identifier: String) -> Result<Resource<Bucket>, Error> {
        Err(no_store())
    }
}

impl store::HostBucket for SpinState {
    async fn get(&mut self, _bucket: Resource<Bucket>, _key: String) -> Result<Option<Vec<u8>>, Error> {
        Err(no_store())
    }

    async fn set(&mut self, _bucket: Resource<Bucket>, _key: String, _value: Vec<u8>) -> Result<(), Error> {
        Err(no_store())
    }

    async fn delete(&mut self, _bucket: Resource<Bucket>, _key: String) -> Result<(), Error> {
        Err(no_store())
    }

    async fn exists(&mut self, _bucket: Resource<Bucket>, _key: String) -> Result<bool, Error> {
        Err(no_store())
    }

    async fn list_keys(&mut self, _bucket: Resource<Bucket>, _cursor: Option<String>) -> Result<KeyResponse, Error> {
        Err(no_store())
    }

    async fn drop(&mut self, _bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl batch::Host for SpinState {
    async fn get_many(
        &mut self,
        _bucket: Resource<Bucket>,
        _keys: Vec<String>,
    ) -> Result<Vec<(String, Option<Vec<u8>>)>, Error> {
        Err(no_store())
    }

    async fn set_many(&mut self, _bucket: Resource<Bucket>, _key_values: Vec<(String, Vec<u8>)>) -> Result<(), Error> {
        Err(no_store())
    }

    async fn delete_many(&mut self, _bucket: Resource<Bucket>, _keys: Vec<String>) -> Result<(), Error> {
        Err(no_store())
    }
}
