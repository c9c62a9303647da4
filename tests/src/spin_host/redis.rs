//! `fermyon:spin/redis@2.0.0` on the `redis` crate, answering as Spin's
//! outbound Redis does (arrays flattened, `OK` as a status).

use redis::aio::MultiplexedConnection;
use wasmtime::component::Resource;

use super::state::bindings::fermyon::spin::redis::{self as spin, Error, RedisParameter, RedisResult};
use super::SpinState;

/// An open connection.
pub struct RedisConnection(MultiplexedConnection);

fn other(e: impl std::fmt::Display) -> Error {
    Error::Other(e.to_string())
}

fn flatten(value: redis::Value, out: &mut Vec<RedisResult>) -> Result<(), Error> {
    match value {
        redis::Value::Nil => out.push(RedisResult::Nil),
        redis::Value::Int(n) => out.push(RedisResult::Int64(n)),
        redis::Value::BulkString(b) => out.push(RedisResult::Binary(b)),
        redis::Value::SimpleString(s) => out.push(RedisResult::Status(s)),
        redis::Value::Okay => out.push(RedisResult::Status("OK".into())),
        redis::Value::Array(items) | redis::Value::Set(items) => {
            for item in items {
                flatten(item, out)?;
            }
        }
        _ => return Err(Error::TypeError),
    }
    Ok(())
}

impl SpinState {
    fn redis(&mut self, conn: &Resource<RedisConnection>) -> Result<MultiplexedConnection, Error> {
        self.table.get(conn).map(|c| c.0.clone()).map_err(other)
    }

    async fn run(&mut self, conn: &Resource<RedisConnection>, cmd: redis::Cmd) -> Result<redis::Value, Error> {
        let mut c = self.redis(conn)?;
        cmd.query_async(&mut c).await.map_err(other)
    }
}

impl spin::HostConnection for SpinState {
    async fn open(&mut self, address: String) -> Result<Resource<RedisConnection>, Error> {
        let client = redis::Client::open(address).map_err(|_| Error::InvalidAddress)?;
        let conn = client.get_multiplexed_async_connection().await.map_err(other)?;
        self.table.push(RedisConnection(conn)).map_err(other)
    }

    async fn publish(
        &mut self,
        conn: Resource<RedisConnection>,
        channel: String,
        payload: Vec<u8>,
    ) -> Result<(), Error> {
        self.run(&conn, redis::cmd("PUBLISH").arg(channel).arg(payload).clone()).await.map(|_| ())
    }

    async fn get(&mut self, conn: Resource<RedisConnection>, key: String) -> Result<Option<Vec<u8>>, Error> {
        match self.run(&conn, redis::cmd("GET").arg(key).clone()).await? {
            redis::Value::Nil => Ok(None),
            redis::Value::BulkString(b) => Ok(Some(b)),
            _ => Err(Error::TypeError),
        }
    }

    async fn set(&mut self, conn: Resource<RedisConnection>, key: String, value: Vec<u8>) -> Result<(), Error> {
        self.run(&conn, redis::cmd("SET").arg(key).arg(value).clone()).await.map(|_| ())
    }

    async fn incr(&mut self, conn: Resource<RedisConnection>, key: String) -> Result<i64, Error> {
        match self.run(&conn, redis::cmd("INCR").arg(key).clone()).await? {
            redis::Value::Int(n) => Ok(n),
            _ => Err(Error::TypeError),
        }
    }

    async fn del(&mut self, conn: Resource<RedisConnection>, keys: Vec<String>) -> Result<u32, Error> {
        match self.run(&conn, redis::cmd("DEL").arg(keys).clone()).await? {
            redis::Value::Int(n) => Ok(n as u32),
            _ => Err(Error::TypeError),
        }
    }

    async fn sadd(&mut self, conn: Resource<RedisConnection>, key: String, values: Vec<String>) -> Result<u32, Error> {
        match self.run(&conn, redis::cmd("SADD").arg(key).arg(values).clone()).await? {
            redis::Value::Int(n) => Ok(n as u32),
            _ => Err(Error::TypeError),
        }
    }

    async fn smembers(&mut self, conn: Resource<RedisConnection>, key: String) -> Result<Vec<String>, Error> {
        let mut out = Vec::new();
        flatten(self.run(&conn, redis::cmd("SMEMBERS").arg(key).clone()).await?, &mut out)?;
        out.into_iter()
            .map(|r| match r {
                RedisResult::Binary(b) => String::from_utf8(b).map_err(|_| Error::TypeError),
                _ => Err(Error::TypeError),
            })
            .collect()
    }

    async fn srem(&mut self, conn: Resource<RedisConnection>, key: String, values: Vec<String>) -> Result<u32, Error> {
        match self.run(&conn, redis::cmd("SREM").arg(key).arg(values).clone()).await? {
            redis::Value::Int(n) => Ok(n as u32),
            _ => Err(Error::TypeError),
        }
    }

    async fn execute(
        &mut self,
        conn: Resource<RedisConnection>,
        command: String,
        arguments: Vec<RedisParameter>,
    ) -> Result<Vec<RedisResult>, Error> {
        let mut cmd = redis::cmd(&command);
        for argument in arguments {
            match argument {
                RedisParameter::Int64(n) => cmd.arg(n),
                RedisParameter::Binary(b) => cmd.arg(b),
            };
        }
        let mut out = Vec::new();
        flatten(self.run(&conn, cmd).await?, &mut out)?;
        Ok(out)
    }

    async fn drop(&mut self, conn: Resource<RedisConnection>) -> wasmtime::Result<()> {
        self.table.delete(conn)?;
        Ok(())
    }
}

impl spin::Host for SpinState {}
