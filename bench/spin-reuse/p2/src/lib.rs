//! The `wasi:http` 0.2 twin of the 0.3 probe for `bench/spin-reuse.sh`: a
//! fresh instance per request under Spin 3.6.3. `/x` answers 52 bytes and
//! reads nothing; `/kv` opens the `default` store and reads key `k`;
//! `/set` writes `k` (1,000 bytes).

wit_bindgen::generate!({
    path: "wit",
    world: "probe",
    generate_all,
});

use exports::wasi::http::incoming_handler::Guest;
use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};
use wasi::keyvalue::store::{self, Error};

fn read() -> Result<Vec<u8>, Error> {
    Ok(store::open("default")?.get("k")?.unwrap_or_default())
}

fn write() -> Result<Vec<u8>, Error> {
    store::open("default")?.set("k", &[b'x'; 1000])?;
    Ok(b"set\n".to_vec())
}

struct Probe;

impl Guest for Probe {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let body = match path.as_str() {
            "/set" => write(),
            "/kv" => read(),
            _ => Ok(vec![b'h'; 52]),
        };
        let (status, body) = match body {
            Ok(body) => (200, body),
            Err(error) => (500, format!("{error:?}\n").into_bytes()),
        };
        let response = OutgoingResponse::new(Fields::new());
        let _ = response.set_status_code(status);
        let Ok(outgoing) = response.body() else { return };
        ResponseOutparam::set(out, Ok(response));
        if let Ok(stream) = outgoing.write() {
            let _ = stream.blocking_write_and_flush(&body);
        }
        let _ = OutgoingBody::finish(outgoing, None);
    }
}

export!(Probe);
