//! A `wasi:http` 0.3 probe for `bench/spin-reuse.sh`: Spin 3.6.3 sends one
//! instance of it up to 128 requests (16 at a time), where a 0.2 component
//! gets a fresh instance per request. `/x` answers 52 bytes and reads
//! nothing; `/kv` reads key `k` of the `default` store through a handle
//! the instance opened once; `/kv-open` opens the store per request (as a
//! fresh instance must); `/set` writes `k` (1,000 bytes).

wit_bindgen::generate!({
    path: "wit",
    world: "probe",
    generate_all,
});

use exports::wasi::http::handler::Guest;
use std::cell::RefCell;
use wasi::http::types::{ErrorCode, Fields, Request, Response};
use wasi::keyvalue::store::{self, Bucket, Error};

thread_local! {
    /// The store, opened by the instance's first `/kv`.
    static BUCKET: RefCell<Option<Bucket>> = const { RefCell::new(None) };
}

/// Key `k`, through the instance's handle or a new one.
fn read(open_each: bool) -> Result<Vec<u8>, Error> {
    if open_each {
        return Ok(store::open("default")?.get("k")?.unwrap_or_default());
    }
    BUCKET.with(|cell| {
        let mut cell = cell.borrow_mut();
        let bucket = match cell.take() {
            Some(bucket) => bucket,
            None => store::open("default")?,
        };
        let value = bucket.get("k");
        *cell = Some(bucket);
        Ok(value?.unwrap_or_default())
    })
}

fn write() -> Result<Vec<u8>, Error> {
    store::open("default")?.set("k", &[b'x'; 1000])?;
    Ok(b"set\n".to_vec())
}

struct Probe;

impl Guest for Probe {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let path = request.get_path_with_query().unwrap_or_default();
        let body = match path.as_str() {
            "/set" => write(),
            "/kv" => read(false),
            "/kv-open" => read(true),
            _ => Ok(vec![b'h'; 52]),
        };
        let (status, body) = match body {
            Ok(body) => (200, body),
            Err(error) => (500, format!("{error:?}\n").into_bytes()),
        };
        let (mut body_tx, body_rx) = wit_stream::new::<u8>();
        let (trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
        let (response, _sent) = Response::new(Fields::new(), Some(body_rx), trailers_rx);
        response.set_status_code(status).map_err(|()| ErrorCode::InternalError(None))?;
        wit_bindgen::spawn_local(async move {
            let _unwritten = body_tx.write_all(body).await;
            drop(body_tx);
            let _ = trailers_tx.write(Ok(None)).await;
        });
        Ok(response)
    }
}

export!(Probe);
