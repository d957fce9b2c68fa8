mod callbacks;
mod http;
mod io;
pub(crate) mod serve;
mod types;
