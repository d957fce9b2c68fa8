//! Fast refusals: a POST that would wait behind the application's limit of requests is answered
//! 503 here, on the I/O thread, without the GIL or the application's event loop.
//!
//! Counted: POSTs handed to the application and not yet answered, less those the application says
//! are still reading their body (a slow body must not hold a place).
use http_body_util::BodyExt;
use hyper::{
    Response,
    body::Bytes,
    header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER, SERVER as HK_SERVER},
};
use pyo3::prelude::*;
use std::sync::{
    RwLock,
    atomic::{AtomicIsize, AtomicU64, Ordering},
};

use crate::http::{HTTPRequest, HTTPResponse, HV_SERVER};

static LIMIT: AtomicIsize = AtomicIsize::new(0);
static HANDED: AtomicIsize = AtomicIsize::new(0);
static READING: AtomicIsize = AtomicIsize::new(0);
static REFUSED: AtomicU64 = AtomicU64::new(0);
static BODY: RwLock<Bytes> = RwLock::new(Bytes::from_static(b"{\"error\": \"overloaded\"}"));

pub(crate) struct Ticket(bool);

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.0 {
            HANDED.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[inline]
pub(crate) fn admit(req: &HTTPRequest) -> Result<Ticket, HTTPResponse> {
    let limit = LIMIT.load(Ordering::Relaxed);
    if limit == 0 || req.method() != hyper::Method::POST {
        return Ok(Ticket(false));
    }
    if HANDED.load(Ordering::Relaxed) - READING.load(Ordering::Relaxed) < limit {
        HANDED.fetch_add(1, Ordering::Relaxed);
        return Ok(Ticket(true));
    }
    REFUSED.fetch_add(1, Ordering::Relaxed);
    let body = BODY.read().unwrap().clone();
    let mut builder = Response::builder().status(503);
    let headers = builder.headers_mut().unwrap();
    headers.insert(HK_SERVER, HV_SERVER);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    Err(builder
        .body(http_body_util::Full::new(body).map_err(|e| match e {}).boxed())
        .unwrap())
}

#[pyfunction]
fn rsgi_admission_limit(limit: isize, body: Vec<u8>) {
    *BODY.write().unwrap() = Bytes::from(body);
    LIMIT.store(limit, Ordering::Relaxed);
}

#[pyfunction]
fn rsgi_admission_reading(delta: isize) {
    READING.fetch_add(delta, Ordering::Relaxed);
}

#[pyfunction]
fn rsgi_admission_stats() -> (u64, isize, isize) {
    (
        REFUSED.load(Ordering::Relaxed),
        HANDED.load(Ordering::Relaxed),
        READING.load(Ordering::Relaxed),
    )
}

pub(crate) fn init_pymodule(module: &Bound<PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(rsgi_admission_limit, module)?)?;
    module.add_function(wrap_pyfunction!(rsgi_admission_reading, module)?)?;
    module.add_function(wrap_pyfunction!(rsgi_admission_stats, module)?)?;
    Ok(())
}
