//! `fermyon:spin/mysql@2.0.0` on `mysql_async`, as Spin's outbound MySQL
//! answers: prepared statements, columns typed from their MySQL type and
//! flags (a binary collation makes text `binary`), `execute` says nothing.

use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::prelude::Queryable as _;
use mysql_async::{Conn, Params, Value};
use wasmtime::component::Resource;

use super::state::bindings::fermyon::spin::mysql as spin;
use super::state::bindings::fermyon::spin::rdbms_types::{Column, DbDataType, DbValue, Error, ParameterValue, RowSet};
use super::SpinState;

/// An open connection.
pub struct MySqlConnection(Conn);

fn param(p: ParameterValue) -> Value {
    match p {
        ParameterValue::Boolean(v) => v.into(),
        ParameterValue::Int8(v) => v.into(),
        ParameterValue::Int16(v) => v.into(),
        ParameterValue::Int32(v) => v.into(),
        ParameterValue::Int64(v) => v.into(),
        ParameterValue::Uint8(v) => v.into(),
        ParameterValue::Uint16(v) => v.into(),
        ParameterValue::Uint32(v) => v.into(),
        ParameterValue::Uint64(v) => v.into(),
        ParameterValue::Floating32(v) => v.into(),
        ParameterValue::Floating64(v) => v.into(),
        ParameterValue::Str(v) => v.into(),
        ParameterValue::Binary(v) => v.into(),
        ParameterValue::DbNull => Value::NULL,
    }
}

fn data_type(c: &mysql_async::Column) -> DbDataType {
    let binary = c.flags().contains(ColumnFlags::BINARY_FLAG);
    let signed = !c.flags().contains(ColumnFlags::UNSIGNED_FLAG);
    match c.column_type() {
        ColumnType::MYSQL_TYPE_BLOB if !binary => DbDataType::Str,
        ColumnType::MYSQL_TYPE_BLOB | ColumnType::MYSQL_TYPE_MEDIUM_BLOB | ColumnType::MYSQL_TYPE_LONG_BLOB => {
            DbDataType::Binary
        }
        ColumnType::MYSQL_TYPE_STRING | ColumnType::MYSQL_TYPE_VAR_STRING if binary => DbDataType::Binary,
        ColumnType::MYSQL_TYPE_STRING | ColumnType::MYSQL_TYPE_VAR_STRING => DbDataType::Str,
        ColumnType::MYSQL_TYPE_DOUBLE => DbDataType::Floating64,
        ColumnType::MYSQL_TYPE_FLOAT => DbDataType::Floating32,
        ColumnType::MYSQL_TYPE_LONGLONG if signed => DbDataType::Int64,
        ColumnType::MYSQL_TYPE_LONGLONG => DbDataType::Uint64,
        ColumnType::MYSQL_TYPE_LONG | ColumnType::MYSQL_TYPE_INT24 if signed => DbDataType::Int32,
        ColumnType::MYSQL_TYPE_LONG | ColumnType::MYSQL_TYPE_INT24 => DbDataType::Uint32,
        ColumnType::MYSQL_TYPE_SHORT if signed => DbDataType::Int16,
        ColumnType::MYSQL_TYPE_SHORT => DbDataType::Uint16,
        ColumnType::MYSQL_TYPE_TINY if signed => DbDataType::Int8,
        ColumnType::MYSQL_TYPE_TINY => DbDataType::Uint8,
        _ => DbDataType::Other,
    }
}

fn value(v: Value, t: DbDataType) -> Result<DbValue, Error> {
    fn conv<T: mysql_async::prelude::FromValue>(v: Value) -> Result<T, Error> {
        mysql_async::from_value_opt::<T>(v).map_err(|e| Error::ValueConversionFailed(e.to_string()))
    }
    if v == Value::NULL {
        return Ok(DbValue::DbNull);
    }
    Ok(match t {
        DbDataType::Binary => DbValue::Binary(conv(v)?),
        DbDataType::Boolean => DbValue::Boolean(conv(v)?),
        DbDataType::Floating32 => DbValue::Floating32(conv(v)?),
        DbDataType::Floating64 => DbValue::Floating64(conv(v)?),
        DbDataType::Int8 => DbValue::Int8(conv(v)?),
        DbDataType::Int16 => DbValue::Int16(conv(v)?),
        DbDataType::Int32 => DbValue::Int32(conv(v)?),
        DbDataType::Int64 => DbValue::Int64(conv(v)?),
        DbDataType::Str => DbValue::Str(conv(v)?),
        DbDataType::Uint8 => DbValue::Uint8(conv(v)?),
        DbDataType::Uint16 => DbValue::Uint16(conv(v)?),
        DbDataType::Uint32 => DbValue::Uint32(conv(v)?),
        DbDataType::Uint64 => DbValue::Uint64(conv(v)?),
        DbDataType::Other => return Err(Error::ValueConversionFailed(format!("unsupported value {v:?}"))),
    })
}

fn failed(e: mysql_async::Error) -> Error {
    Error::QueryFailed(e.to_string())
}

impl spin::HostConnection for SpinState {
    async fn open(&mut self, address: String) -> Result<Resource<MySqlConnection>, Error> {
        let opts = mysql_async::Opts::from_url(&address).map_err(|e| Error::ConnectionFailed(e.to_string()))?;
        let conn = Conn::new(opts).await.map_err(|e| Error::ConnectionFailed(e.to_string()))?;
        self.table.push(MySqlConnection(conn)).map_err(|e| Error::Other(e.to_string()))
    }

    async fn query(
        &mut self,
        conn: Resource<MySqlConnection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> Result<RowSet, Error> {
        let c = &mut self.table.get_mut(&conn).map_err(|e| Error::Other(e.to_string()))?.0;
        let params = Params::Positional(params.into_iter().map(param).collect());
        let rows: Vec<mysql_async::Row> = c.exec(statement, params).await.map_err(failed)?;
        let columns: Vec<(String, DbDataType)> = rows
            .first()
            .map(|r| r.columns_ref().iter().map(|c| (c.name_str().into_owned(), data_type(c))).collect())
            .unwrap_or_default();
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let values = row.unwrap();
            out.push(values.into_iter().zip(&columns).map(|(v, (_, t))| value(v, *t)).collect::<Result<_, _>>()?);
        }
        let columns = columns.into_iter().map(|(name, data_type)| Column { name, data_type }).collect();
        Ok(RowSet { columns, rows: out })
    }

    async fn execute(
        &mut self,
        conn: Resource<MySqlConnection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> Result<(), Error> {
        let c = &mut self.table.get_mut(&conn).map_err(|e| Error::Other(e.to_string()))?.0;
        let params = Params::Positional(params.into_iter().map(param).collect());
        c.exec_batch(statement, [params]).await.map_err(failed)
    }

    async fn drop(&mut self, conn: Resource<MySqlConnection>) -> wasmtime::Result<()> {
        self.table.delete(conn)?;
        Ok(())
    }
}

impl spin::Host for SpinState {}
