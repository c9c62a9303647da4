//! `ncps:edge/signer` on the node's [`Signer`]: the secret key stays here.

use wasmtime::component::{HasData, Linker};

use super::Signer;
use crate::bindings::signer;
use crate::{HostResult, NcpsEdgeView};

struct SignerView<'a>(&'a Signer);

struct HasSigner;

impl HasData for HasSigner {
    type Data<'a> = SignerView<'a>;
}

impl signer::Host for SignerView<'_> {
    async fn public_key(&mut self) -> HostResult<String> {
        Ok(self.0.public_key())
    }

    async fn sign(&mut self, fingerprint: String) -> HostResult<String> {
        Ok(self.0.sign(&fingerprint))
    }
}

crate::error::wit_errors!(SignerView<'_>);

pub(crate) fn add_to_linker<T: NcpsEdgeView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    signer::add_to_linker::<T, HasSigner>(linker, |t| SignerView(&t.ncps_edge().services.signer))
}
