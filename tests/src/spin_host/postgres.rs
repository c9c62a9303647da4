//! `fermyon:spin/postgres@2.0.0` on `tokio-postgres`, converting values as
//! Spin's outbound PostgreSQL does, with connections from a pool per
//! address as Spin 3.4+ keeps them (each checkout runs
//! `pg_advisory_unlock_all()`, as Spin's does).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::{NoTls, Row};
use wasmtime::component::Resource;

use super::state::bindings::fermyon::spin::postgres as spin;
use super::state::bindings::fermyon::spin::rdbms_types::{Column, DbDataType, DbValue, Error, ParameterValue, RowSet};
use super::SpinState;

/// A connection checked out of its address's pool (returned on drop).
pub struct PgConnection(deadpool_postgres::Object);

fn pool(address: &str) -> Result<Pool, Error> {
    static POOLS: OnceLock<Mutex<HashMap<String, Pool>>> = OnceLock::new();
    let mut pools = POOLS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(pool) = pools.get(address) {
        return Ok(pool.clone());
    }
    let config: tokio_postgres::Config = address.parse().map_err(|e| Error::ConnectionFailed(format!("{e}")))?;
    let recycling = RecyclingMethod::Custom("SELECT pg_advisory_unlock_all()".into());
    let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: recycling });
    let pool = Pool::builder(manager).max_size(16).build().map_err(|e| Error::ConnectionFailed(e.to_string()))?;
    pools.insert(address.to_owned(), pool.clone());
    Ok(pool)
}

/// SQL NULL of whatever type the statement wants.
#[derive(Debug)]
struct Null;

impl ToSql for Null {
    fn to_sql(&self, _: &Type, _: &mut bytes::BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        Ok(IsNull::Yes)
    }
    fn accepts(_: &Type) -> bool {
        true
    }
    to_sql_checked!();
}

fn param(p: ParameterValue) -> Box<dyn ToSql + Send + Sync> {
    match p {
        ParameterValue::Boolean(v) => Box::new(v),
        ParameterValue::Int8(v) => Box::new(v),
        ParameterValue::Int16(v) => Box::new(v),
        ParameterValue::Int32(v) => Box::new(v),
        ParameterValue::Int64(v) => Box::new(v),
        ParameterValue::Uint8(v) => Box::new(i16::from(v)),
        ParameterValue::Uint16(v) => Box::new(i32::from(v)),
        ParameterValue::Uint32(v) => Box::new(i64::from(v)),
        ParameterValue::Uint64(v) => Box::new(v as i64),
        ParameterValue::Floating32(v) => Box::new(v),
        ParameterValue::Floating64(v) => Box::new(v),
        ParameterValue::Str(v) => Box::new(v),
        ParameterValue::Binary(v) => Box::new(v),
        ParameterValue::DbNull => Box::new(Null),
    }
}

fn data_type(t: &Type) -> DbDataType {
    match *t {
        Type::BOOL => DbDataType::Boolean,
        Type::INT2 => DbDataType::Int16,
        Type::INT4 => DbDataType::Int32,
        Type::INT8 => DbDataType::Int64,
        Type::FLOAT4 => DbDataType::Floating32,
        Type::FLOAT8 => DbDataType::Floating64,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => DbDataType::Str,
        Type::BYTEA => DbDataType::Binary,
        _ => DbDataType::Other,
    }
}

fn value(row: &Row, i: usize) -> Result<DbValue, Error> {
    let conv = |e: tokio_postgres::Error| Error::ValueConversionFailed(e.to_string());
    let t = row.columns()[i].type_().clone();
    Ok(match t {
        Type::BOOL => row.try_get::<_, Option<bool>>(i).map_err(conv)?.map_or(DbValue::DbNull, DbValue::Boolean),
        Type::INT2 => row.try_get::<_, Option<i16>>(i).map_err(conv)?.map_or(DbValue::DbNull, DbValue::Int16),
        Type::INT4 => row.try_get::<_, Option<i32>>(i).map_err(conv)?.map_or(DbValue::DbNull, DbValue::Int32),
        Type::INT8 => row.try_get::<_, Option<i64>>(i).map_err(conv)?.map_or(DbValue::DbNull, DbValue::Int64),
        Type::FLOAT4 => row.try_get::<_, Option<f32>>(i).map_err(conv)?.map_or(DbValue::DbNull, DbValue::Floating32),
        Type::FLOAT8 => row.try_get::<_, Option<f64>>(i).map_err(conv)?.map_or(DbValue::DbNull, DbValue::Floating64),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
            row.try_get::<_, Option<String>>(i).map_err(conv)?.map_or(DbValue::DbNull, DbValue::Str)
        }
        Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(i).map_err(conv)?.map_or(DbValue::DbNull, DbValue::Binary),
        _ => DbValue::Unsupported,
    })
}

fn query_failed(e: tokio_postgres::Error) -> Error {
    // Spin reports the server's message text.
    Error::QueryFailed(e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_owned()))
}

impl SpinState {
    fn pg(&self, conn: &Resource<PgConnection>) -> Result<&deadpool_postgres::Object, Error> {
        self.table.get(conn).map(|c| &c.0).map_err(|e| Error::Other(e.to_string()))
    }
}

impl spin::HostConnection for SpinState {
    async fn open(&mut self, address: String) -> Result<Resource<PgConnection>, Error> {
        let conn = pool(&address)?.get().await.map_err(|e| Error::ConnectionFailed(e.to_string()))?;
        self.table.push(PgConnection(conn)).map_err(|e| Error::Other(e.to_string()))
    }

    async fn query(
        &mut self,
        conn: Resource<PgConnection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> Result<RowSet, Error> {
        let params: Vec<Box<dyn ToSql + Send + Sync>> = params.into_iter().map(param).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
        let client = self.pg(&conn)?;
        let statement = client.prepare(&statement).await.map_err(query_failed)?;
        let columns = statement
            .columns()
            .iter()
            .map(|c| Column { name: c.name().to_owned(), data_type: data_type(c.type_()) })
            .collect();
        let rows = client.query(&statement, &refs).await.map_err(query_failed)?;
        let rows = rows.iter().map(|r| (0..r.len()).map(|i| value(r, i)).collect()).collect::<Result<_, _>>()?;
        Ok(RowSet { columns, rows })
    }

    async fn execute(
        &mut self,
        conn: Resource<PgConnection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> Result<u64, Error> {
        let params: Vec<Box<dyn ToSql + Send + Sync>> = params.into_iter().map(param).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
        self.pg(&conn)?.execute(&statement, &refs).await.map_err(query_failed)
    }

    async fn drop(&mut self, conn: Resource<PgConnection>) -> wasmtime::Result<()> {
        self.table.delete(conn)?;
        Ok(())
    }
}

impl spin::Host for SpinState {}
