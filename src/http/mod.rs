//! Our HTTP/1.1: request heads on `httparse` (`head`), body framing with an explicit chunked state
//! machine (`chunked`), `Range`/`Content-Range` parsing (`range`), responses (`response`), and the
//! buffered connection with its timeouts, 100-continue and zero-copy file sending (`conn`).

pub mod budget;
pub mod chunked;
pub mod conn;
pub mod head;
pub mod range;
pub mod response;

pub use conn::{Body, BodyError, Conn};
pub use head::{HeadError, Limits, Method, RequestHead};
pub use response::{Payload, Response};
