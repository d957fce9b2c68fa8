use futures::StreamExt;
use http_body_util::BodyExt;
use hyper::body::{self, Bytes};
use pyo3::{
    prelude::*,
    types::{PyBytes, PyList},
};
use std::sync::{Arc, Mutex};
use tokio::sync::Mutex as AsyncMutex;
use tokio_util::bytes::{BufMut, BytesMut};

use crate::runtime::RuntimeRef;

const LINE_SPLIT: u8 = u8::from_be_bytes(*b"\n");

enum WSGIBodyBuffering {
    Line,
    Size(usize),
}

#[pyclass(frozen, module = "granian._granian")]
pub(crate) struct WSGIBody {
    rt: RuntimeRef,
    pub(super) inner: Arc<AsyncMutex<Option<http_body_util::BodyStream<body::Incoming>>>>,
    buffer: Arc<Mutex<BytesMut>>,
}

impl WSGIBody {
    pub fn new(rt: RuntimeRef, body: body::Incoming) -> Self {
        Self {
            rt,
            inner: Arc::new(AsyncMutex::new(Some(http_body_util::BodyStream::new(body)))),
            buffer: Arc::new(Mutex::new(BytesMut::new())),
        }
    }

    #[allow(clippy::await_holding_lock)]
    async fn fill_buffer(
        stream: Arc<AsyncMutex<Option<http_body_util::BodyStream<body::Incoming>>>>,
        buffer: Arc<Mutex<BytesMut>>,
        buffering: WSGIBodyBuffering,
    ) {
        let mut buffer = buffer.lock().unwrap();
        if let WSGIBodyBuffering::Size(size) = buffering
            && buffer.len() >= size
        {
            return;
        }

        let mut guard = stream.lock().await;
        if let Some(stream) = guard.as_mut() {
            match buffering {
                WSGIBodyBuffering::Line => {
                    while let Some(chunk) = stream.next().await {
                        let data = chunk.map_or(body::Bytes::new(), |buf| buf.into_data().unwrap_or_default());
                        let has_split = data.contains(&LINE_SPLIT);
                        buffer.put(data);
                        if has_split {
                            break;
                        }
                    }
                }
                WSGIBodyBuffering::Size(size) => {
                    while let Some(chunk) = stream.next().await {
                        buffer.put(chunk.map_or(body::Bytes::new(), |buf| buf.into_data().unwrap_or_default()));
                        if buffer.len() >= size {
                            break;
                        }
                    }
                }
            }
        }
    }

    #[allow(clippy::map_unwrap_or)]
    fn _readline(&self, py: Python) -> Bytes {
        {
            let mut buffer = self.buffer.lock().unwrap();
            if let Some(next_split) = buffer.iter().position(|&c| c == LINE_SPLIT) {
                return buffer.split_to(next_split + 1).freeze();
            }
        }

        let inner = self.inner.clone();
        py.detach(|| {
            self.rt.inner.block_on(async move {
                WSGIBody::fill_buffer(inner, self.buffer.clone(), WSGIBodyBuffering::Line).await;
            });
        });

        let mut buffer = self.buffer.lock().unwrap();
        buffer
            .iter()
            .position(|&c| c == LINE_SPLIT)
            .map(|next_split| buffer.split_to(next_split + 1).freeze())
            .unwrap_or_else(|| {
                let len = buffer.len();
                buffer.split_to(len).freeze()
            })
    }
}

#[pymethods]
impl WSGIBody {
    fn __iter__(pyself: PyRef<'_, Self>) -> PyRef<'_, Self> {
        pyself
    }

    fn __next__(&self, py: Python) -> Option<Bytes> {
        let line = self._readline(py);
        match line.len() {
            0 => None,
            _ => Some(line),
        }
    }

    #[pyo3(signature = (size=None))]
    fn read(&self, py: Python, size: Option<usize>) -> Bytes {
        match size {
            None => {
                let inner = self.inner.clone();
                py.detach(|| {
                    self.rt.inner.block_on(async move {
                        let mut inner = inner.lock().await;
                        match inner.take() {
                            Some(stream) => BodyExt::collect(stream)
                                .await
                                .map_or(Bytes::new(), http_body_util::Collected::to_bytes),
                            None => Bytes::new(),
                        }
                    })
                })
            }
            Some(size) => match size {
                0 => Bytes::new(),
                size => {
                    let inner = self.inner.clone();
                    py.detach(|| {
                        self.rt.inner.block_on(async move {
                            WSGIBody::fill_buffer(inner, self.buffer.clone(), WSGIBodyBuffering::Size(size)).await;
                        });
                    });

                    let mut buffer = self.buffer.lock().unwrap();
                    let limit = buffer.len();
                    let rsize = if size > limit { limit } else { size };
                    buffer.split_to(rsize).freeze()
                }
            },
        }
    }

    #[pyo3(signature = (_size=None))]
    fn readline(&self, py: Python, _size: Option<usize>) -> Bytes {
        self._readline(py)
    }

    #[pyo3(signature = (_hint=None))]
    fn readlines<'p>(&self, py: Python<'p>, _hint: Option<Py<PyAny>>) -> PyResult<Bound<'p, PyList>> {
        let inner = self.inner.clone();
        let data = py.detach(|| {
            self.rt.inner.block_on(async move {
                let mut inner = inner.lock().await;
                match inner.take() {
                    Some(stream) => BodyExt::collect(stream)
                        .await
                        .map_or(Bytes::new(), http_body_util::Collected::to_bytes),
                    None => Bytes::new(),
                }
            })
        });
        let lines: Vec<Bound<PyBytes>> = data
            .split_inclusive(|&c| c == LINE_SPLIT)
            .map(|item| PyBytes::new(py, item))
            .collect();
        PyList::new(py, lines)
    }
}
