//! `ncps:edge/locks` on the node's [`Locks`]: leases live in the instance's
//! resource table, so they are released when the instance ends.

use std::time::Duration;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use super::{LeaseHandle, Locks, Mode};
use crate::bindings::locks;
use crate::{HostResult, NcpsEdgeView};

struct LocksView<'a> {
    table: &'a mut ResourceTable,
    locks: &'a Locks,
}

struct HasLocks;

impl HasData for HasLocks {
    type Data<'a> = LocksView<'a>;
}

fn mode(m: locks::Mode) -> Mode {
    match m {
        locks::Mode::Exclusive => Mode::Exclusive,
        locks::Mode::Shared => Mode::Shared,
    }
}

impl locks::Host for LocksView<'_> {
    async fn acquire(&mut self, key: String, m: locks::Mode, ttl_ms: u64) -> HostResult<Resource<LeaseHandle>> {
        let lease = self.locks.acquire(&key, mode(m), Duration::from_millis(ttl_ms)).await?;
        Ok(self.table.push(lease)?)
    }

    async fn try_acquire(
        &mut self,
        key: String,
        m: locks::Mode,
        ttl_ms: u64,
    ) -> HostResult<Option<Resource<LeaseHandle>>> {
        match self.locks.try_acquire(&key, mode(m), Duration::from_millis(ttl_ms)).await? {
            Some(lease) => Ok(Some(self.table.push(lease)?)),
            None => Ok(None),
        }
    }
}

impl locks::HostLease for LocksView<'_> {
    async fn extend(&mut self, this: Resource<LeaseHandle>, ttl_ms: u64) -> HostResult<()> {
        Ok(self.table.get(&this)?.extend(Duration::from_millis(ttl_ms)).await?)
    }

    async fn is_held(&mut self, this: Resource<LeaseHandle>) -> wasmtime::Result<bool> {
        Ok(self.table.get(&this)?.is_held())
    }

    async fn keep_alive(
        &mut self,
        this: Resource<LeaseHandle>,
        expiry_ms: u64,
        ceiling_ms: u64,
    ) -> wasmtime::Result<()> {
        self.table.get_mut(&this)?.keep_alive(Duration::from_millis(expiry_ms), Duration::from_millis(ceiling_ms));
        Ok(())
    }

    async fn drop(&mut self, this: Resource<LeaseHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

crate::error::wit_errors!(LocksView<'_>);

pub(crate) fn add_to_linker<T: NcpsEdgeView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    locks::add_to_linker::<T, HasLocks>(linker, |t| {
        let view = t.ncps_edge();
        LocksView { table: view.table, locks: &view.services.locks }
    })
}
