use pyo3::{prelude::*, types::PyTracebackMethods};
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};
use tokio::sync::{SetOnce, oneshot};

pub(crate) struct GuardedReceiver<T> {
    inner: oneshot::Receiver<T>,
    guard: Arc<SetOnce<()>>,
    done: bool,
}

impl<T> GuardedReceiver<T> {
    pub fn new(inner: oneshot::Receiver<T>, guard: Arc<SetOnce<()>>) -> Self {
        Self {
            inner,
            guard,
            done: false,
        }
    }
}

impl<T> Future for GuardedReceiver<T> {
    type Output = Result<T, oneshot::error::RecvError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let ret = Pin::new(&mut self.inner).poll(cx);
        if ret.is_ready() {
            self.done = true;
        }
        ret
    }
}

impl<T> Drop for GuardedReceiver<T> {
    fn drop(&mut self) {
        if !self.done {
            _ = self.guard.set(());
        }
    }
}

pub(crate) fn header_contains_value(
    headers: &hyper::HeaderMap,
    header: impl hyper::header::AsHeaderName,
    value: impl AsRef<[u8]>,
) -> bool {
    let value = value.as_ref();
    for header in headers.get_all(header) {
        if header
            .as_bytes()
            .split(|&c| c == b',')
            .any(|x| trim(x).eq_ignore_ascii_case(value))
        {
            return true;
        }
    }
    false
}

fn trim(data: &[u8]) -> &[u8] {
    trim_end(trim_start(data))
}

#[inline]
fn trim_start(data: &[u8]) -> &[u8] {
    if let Some(start) = data.iter().position(|x| !x.is_ascii_whitespace()) {
        &data[start..]
    } else {
        b""
    }
}

#[inline]
fn trim_end(data: &[u8]) -> &[u8] {
    if let Some(last) = data.iter().rposition(|x| !x.is_ascii_whitespace()) {
        &data[..=last]
    } else {
        b""
    }
}

#[inline]
pub(crate) fn log_application_callable_exception(py: Python, err: &pyo3::PyErr) {
    let tb = match err.traceback(py).map(|t| t.format()) {
        Some(Ok(tb)) => tb,
        _ => String::new(),
    };
    let errs = format!("{tb}{err}");
    log::error!("Application callable raised an exception\n{errs}");
}
