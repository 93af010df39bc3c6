//! Our HTTP/1.1 over `net` and `tls`: request heads on `httparse` (`head`), bodies with
//! 100-continue and the drain (`body`) over an explicit chunked state machine (`chunked`),
//! `Range`/`Content-Range` (`range`), `If-Match`/`If-None-Match` (`etag`), responses (`response`), and the connection with its read
//! buffer, timeouts, parking and file sending (`conn`).

pub mod body;
mod buffer;
pub mod chunked;
pub mod conn;
pub mod etag;
pub mod head;
pub mod range;
pub mod response;

pub use body::{Body, BodyError};
pub use conn::Conn;
pub use head::{HeadError, Limits, Method, RequestHead};
pub use response::{Payload, Response};
