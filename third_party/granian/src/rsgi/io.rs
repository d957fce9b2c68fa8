use futures::{StreamExt, sink::SinkExt};
use http_body_util::BodyExt;
use hyper::body;
use pyo3::{prelude::*, pybacked::PyBackedStr};
use std::{
    borrow::Cow,
    pin::Pin,
    sync::{Arc, Mutex, RwLock, atomic},
    task::{Context, Poll},
};
use tokio::sync::{Mutex as AsyncMutex, Notify, SetOnce, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use super::{
    errors::{error_proto, error_stream},
    types::{PyResponse, PyResponseBody, PyResponseFile, PyResponseFileRange},
};
use crate::{
    conversion::FutureResultToPy,
    runtime::{Runtime, RuntimeRef, empty_future_into_py, err_future_into_py, future_into_py_futlike},
    ws::{HyperWebsocket, UpgradeData, WSRxStream, WSTxStream},
};

pub(crate) type WebsocketDetachedTransport = (i32, bool, Option<WSTxStream>);

struct ResponseBodyStream {
    inner: mpsc::UnboundedReceiver<body::Bytes>,
    closed: Arc<SetOnce<()>>,
}

impl Drop for ResponseBodyStream {
    fn drop(&mut self) {
        _ = self.closed.set(());
    }
}

impl body::Body for ResponseBodyStream {
    type Data = body::Bytes;
    type Error = anyhow::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<body::Frame<Self::Data>, Self::Error>>> {
        self.inner
            .poll_recv(cx)
            .map(|item| item.map(|data| Ok(body::Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_closed() && self.inner.is_empty()
    }

    fn size_hint(&self) -> body::SizeHint {
        body::SizeHint::default()
    }
}

impl ResponseBodyStream {
    fn new(notify: Arc<SetOnce<()>>) -> (mpsc::UnboundedSender<body::Bytes>, Self) {
        let (body_tx, body_rx) = mpsc::unbounded_channel::<body::Bytes>();
        let slf = Self {
            inner: body_rx,
            closed: notify,
        };
        (body_tx, slf)
    }
}

#[pyclass(frozen, module = "granian._granian")]
pub(crate) struct RSGIHTTPStreamTransport {
    tx: mpsc::UnboundedSender<body::Bytes>,
}

impl RSGIHTTPStreamTransport {
    pub fn new(transport: mpsc::UnboundedSender<body::Bytes>) -> Self {
        Self { tx: transport }
    }
}

// NOTE: the interface doesn't need to be async anymore.
//       This would be a breaking change though; probably requires a major version bump in RSGI
#[pymethods]
impl RSGIHTTPStreamTransport {
    fn send_bytes<'p>(&self, py: Python<'p>, data: Cow<[u8]>) -> PyResult<Bound<'p, PyAny>> {
        let bdata = body::Bytes::from(std::convert::Into::<Box<[u8]>>::into(data));
        match self.tx.send(bdata) {
            Ok(()) => empty_future_into_py(py),
            _ => err_future_into_py(py, error_stream!()),
        }
    }

    fn send_str<'p>(&self, py: Python<'p>, data: String) -> PyResult<Bound<'p, PyAny>> {
        match self.tx.send(body::Bytes::from(data)) {
            Ok(()) => empty_future_into_py(py),
            _ => err_future_into_py(py, error_stream!()),
        }
    }
}

#[pyclass(frozen, module = "granian._granian")]
pub(crate) struct RSGIHTTPProtocol {
    rt: RuntimeRef,
    disconnect_guard: Arc<SetOnce<()>>,
    tx: Mutex<Option<oneshot::Sender<PyResponse>>>,
    body: Mutex<Option<body::Incoming>>,
    body_stream: Arc<AsyncMutex<Option<http_body_util::BodyStream<body::Incoming>>>>,
    disconnected: Arc<atomic::AtomicBool>,
}

impl RSGIHTTPProtocol {
    pub fn new(
        rt: RuntimeRef,
        disconnect_guard: Arc<SetOnce<()>>,
        tx: oneshot::Sender<PyResponse>,
        body: body::Incoming,
    ) -> Self {
        Self {
            rt,
            disconnect_guard,
            tx: Mutex::new(Some(tx)),
            body: Mutex::new(Some(body)),
            body_stream: Arc::new(AsyncMutex::new(None)),
            disconnected: Arc::new(atomic::AtomicBool::new(false)),
        }
    }

    pub fn tx(&self) -> Option<oneshot::Sender<PyResponse>> {
        _ = self.body.lock().unwrap().take();
        _ = self.body_stream.try_lock().map(|mut guard| guard.take());
        self.tx.lock().unwrap().take()
    }
}

#[pymethods]
impl RSGIHTTPProtocol {
    fn __call__<'p>(&self, py: Python<'p>) -> PyResult<Bound<'p, PyAny>> {
        if let Some(body) = self.body.lock().unwrap().take() {
            return future_into_py_futlike(self.rt.clone(), py, async move {
                match body.collect().await {
                    Ok(data) => FutureResultToPy::Bytes(data.to_bytes()),
                    _ => FutureResultToPy::Err(error_stream!()),
                }
            });
        }
        error_proto!()
    }

    fn __aiter__(pyself: Py<Self>, py: Python) -> PyResult<Py<Self>> {
        let inner = pyself.get();
        if let Some(body) = inner.body.lock().unwrap().take() {
            let mut stream = inner.body_stream.blocking_lock();
            *stream = Some(http_body_util::BodyStream::new(body));
            return Ok(pyself.clone_ref(py));
        }
        error_proto!()
    }

    fn __anext__<'p>(&self, py: Python<'p>) -> PyResult<Bound<'p, PyAny>> {
        if self.body_stream.blocking_lock().is_none() {
            return Err(pyo3::exceptions::PyStopAsyncIteration::new_err("stream exhausted"));
        }

        let body_stream = self.body_stream.clone();
        future_into_py_futlike(self.rt.clone(), py, async move {
            let guard = &mut *body_stream.lock().await;
            if let Some(stream) = guard.as_mut() {
                if let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_or(body::Bytes::new(), |buf| buf.into_data().unwrap_or_default());
                    return FutureResultToPy::Bytes(chunk);
                }
                _ = guard.take();
            }
            FutureResultToPy::Bytes(body::Bytes::new())
        })
    }

    fn client_disconnect<'p>(&self, py: Python<'p>) -> PyResult<Bound<'p, PyAny>> {
        if self.disconnected.load(atomic::Ordering::Acquire) {
            return empty_future_into_py(py);
        }

        let guard = self.disconnect_guard.clone();
        let state = self.disconnected.clone();
        future_into_py_futlike(self.rt.clone(), py, async move {
            guard.wait().await;
            state.store(true, atomic::Ordering::Release);
            FutureResultToPy::None
        })
    }

    #[pyo3(signature = (status=200, headers=vec![]))]
    fn response_empty(&self, status: u16, headers: Vec<(PyBackedStr, PyBackedStr)>) {
        if let Some(tx) = self.tx.lock().unwrap().take() {
            _ = tx.send(PyResponse::Body(PyResponseBody::empty(status, headers)));
        }
    }

    #[pyo3(signature = (status=200, headers=vec![], body=vec![].into()))]
    fn response_bytes(&self, status: u16, headers: Vec<(PyBackedStr, PyBackedStr)>, body: Cow<[u8]>) {
        if let Some(tx) = self.tx.lock().unwrap().take() {
            _ = tx.send(PyResponse::Body(PyResponseBody::from_bytes(
                status,
                headers,
                body.into(),
            )));
        }
    }

    #[pyo3(signature = (status=200, headers=vec![], body=String::new()))]
    fn response_str(&self, status: u16, headers: Vec<(PyBackedStr, PyBackedStr)>, body: String) {
        if let Some(tx) = self.tx.lock().unwrap().take() {
            _ = tx.send(PyResponse::Body(PyResponseBody::from_string(status, headers, body)));
        }
    }

    #[pyo3(signature = (status, headers, file))]
    fn response_file(&self, status: u16, headers: Vec<(PyBackedStr, PyBackedStr)>, file: String) {
        if let Some(tx) = self.tx.lock().unwrap().take() {
            _ = tx.send(PyResponse::File(PyResponseFile::new(status, headers, file)));
        }
    }

    #[pyo3(signature = (status, headers, file, start, end))]
    fn response_file_range(
        &self,
        status: u16,
        headers: Vec<(PyBackedStr, PyBackedStr)>,
        file: String,
        start: u64,
        end: u64,
    ) -> PyResult<()> {
        if start >= end {
            return Err(pyo3::exceptions::PyValueError::new_err("Invalid range"));
        }
        if let Some(tx) = self.tx.lock().unwrap().take() {
            _ = tx.send(PyResponse::FileRange(PyResponseFileRange::new(
                status, headers, file, start, end,
            )));
        }
        Ok(())
    }

    #[pyo3(signature = (status=200, headers=vec![]))]
    fn response_stream<'p>(
        &self,
        py: Python<'p>,
        status: u16,
        headers: Vec<(PyBackedStr, PyBackedStr)>,
    ) -> PyResult<Bound<'p, RSGIHTTPStreamTransport>> {
        if let Some(tx) = self.tx.lock().unwrap().take() {
            let (body_tx, body_stream) = ResponseBodyStream::new(self.disconnect_guard.clone());
            _ = tx.send(PyResponse::Body(PyResponseBody::new(
                status,
                headers,
                BodyExt::boxed(body_stream),
            )));
            let trx = Py::new(py, RSGIHTTPStreamTransport::new(body_tx))?;
            return Ok(trx.into_bound(py));
        }
        error_proto!()
    }
}

#[pyclass(frozen, module = "granian._granian")]
pub(crate) struct RSGIWebsocketTransport {
    rt: RuntimeRef,
    dg: Arc<Notify>,
    tx: Arc<AsyncMutex<Option<WSTxStream>>>,
    rx: Arc<AsyncMutex<WSRxStream>>,
    closed: Arc<atomic::AtomicBool>,
}

impl RSGIWebsocketTransport {
    pub fn new(
        rt: RuntimeRef,
        dg: Arc<Notify>,
        tx: Arc<AsyncMutex<Option<WSTxStream>>>,
        rx: WSRxStream,
        closed: Arc<atomic::AtomicBool>,
    ) -> Self {
        Self {
            rt,
            dg,
            tx,
            rx: Arc::new(AsyncMutex::new(rx)),
            closed,
        }
    }
}

#[pymethods]
impl RSGIWebsocketTransport {
    fn receive<'p>(&self, py: Python<'p>) -> PyResult<Bound<'p, PyAny>> {
        let transport = self.rx.clone();
        let dg = self.dg.clone();

        future_into_py_futlike(self.rt.clone(), py, async move {
            if let Ok(mut stream) = transport.try_lock() {
                while let Some(recv) = tokio::select! {
                    biased;
                    recv = stream.next() => recv,
                    () = dg.notified() => Some(Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed)),
                } {
                    match recv {
                        Ok(Message::Ping(_) | Message::Pong(_)) => {}
                        Ok(message) => return FutureResultToPy::RSGIWSMessage(message),
                        _ => break,
                    }
                }
                return FutureResultToPy::Err(error_stream!());
            }
            FutureResultToPy::Err(error_proto!())
        })
    }

    fn send_bytes<'p>(&self, py: Python<'p>, data: Cow<[u8]>) -> PyResult<Bound<'p, PyAny>> {
        if self.closed.load(atomic::Ordering::Acquire) {
            return err_future_into_py(py, error_proto!());
        }

        let transport = self.tx.clone();
        let bdata: Box<[u8]> = data.into();
        future_into_py_futlike(self.rt.clone(), py, async move {
            if let Some(stream) = &mut *(transport.lock().await) {
                return match stream.send(bdata[..].into()).await {
                    Ok(()) => FutureResultToPy::None,
                    _ => FutureResultToPy::Err(error_stream!()),
                };
            }
            FutureResultToPy::Err(error_proto!())
        })
    }

    fn send_str<'p>(&self, py: Python<'p>, data: String) -> PyResult<Bound<'p, PyAny>> {
        if self.closed.load(atomic::Ordering::Acquire) {
            return err_future_into_py(py, error_proto!());
        }

        let transport = self.tx.clone();
        future_into_py_futlike(self.rt.clone(), py, async move {
            if let Some(stream) = &mut *(transport.lock().await) {
                return match stream.send(data.into()).await {
                    Ok(()) => FutureResultToPy::None,
                    _ => FutureResultToPy::Err(error_stream!()),
                };
            }
            FutureResultToPy::Err(error_proto!())
        })
    }
}

#[pyclass(frozen, module = "granian._granian")]
pub(crate) struct RSGIWebsocketProtocol {
    rt: RuntimeRef,
    tx: Mutex<Option<oneshot::Sender<WebsocketDetachedTransport>>>,
    disconnect_guard: Arc<Notify>,
    websocket: Arc<AsyncMutex<HyperWebsocket>>,
    upgrade: RwLock<Option<UpgradeData>>,
    closed: Arc<atomic::AtomicBool>,
    transport: Arc<AsyncMutex<Option<WSTxStream>>>,
}

impl RSGIWebsocketProtocol {
    pub fn new(
        rt: RuntimeRef,
        tx: oneshot::Sender<WebsocketDetachedTransport>,
        websocket: HyperWebsocket,
        upgrade: UpgradeData,
        disconnect_guard: Arc<Notify>,
    ) -> Self {
        Self {
            rt,
            tx: Mutex::new(Some(tx)),
            disconnect_guard,
            websocket: Arc::new(AsyncMutex::new(websocket)),
            upgrade: RwLock::new(Some(upgrade)),
            closed: Arc::new(false.into()),
            transport: Arc::new(AsyncMutex::new(None)),
        }
    }

    fn consumed(&self) -> bool {
        self.upgrade.read().unwrap().is_none()
    }
}

#[pymethods]
impl RSGIWebsocketProtocol {
    #[pyo3(signature = (status=None))]
    pub fn close(&self, status: Option<i32>) {
        if let Some(tx) = self.tx.lock().unwrap().take() {
            self.closed.store(true, atomic::Ordering::Release);
            let transport = self.transport.clone();
            let consumed = self.consumed();

            self.rt.spawn(async move {
                let mut handle = None;
                let mut transport = transport.lock().await;
                if let Some(transport) = transport.take() {
                    handle = Some(transport);
                }

                let _ = tx.send((status.unwrap_or(403), consumed, handle));
            });
        }
    }

    fn accept<'p>(&self, py: Python<'p>) -> PyResult<Bound<'p, PyAny>> {
        let rth = self.rt.clone();
        let dg = self.disconnect_guard.clone();
        let mut upgrade = self.upgrade.write().unwrap().take().unwrap();
        let closed = self.closed.clone();
        let transport = self.websocket.clone();
        let itransport = self.transport.clone();

        future_into_py_futlike(self.rt.clone(), py, async move {
            let mut ws = transport.lock().await;
            match upgrade.send(None, None, None).await {
                Ok(()) => match (&mut *ws).await {
                    Ok(stream) => {
                        let (stx, srx) = stream.split();
                        {
                            let mut guard = itransport.lock().await;
                            *guard = Some(stx);
                        }
                        FutureResultToPy::RSGIWSAccept(RSGIWebsocketTransport::new(rth, dg, itransport, srx, closed))
                    }
                    _ => FutureResultToPy::Err(error_proto!()),
                },
                _ => FutureResultToPy::Err(error_proto!()),
            }
        })
    }
}
