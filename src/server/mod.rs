//! The server: application state shared by the workers (`app`) and the runtime that runs them
//! (`runtime`: drivers, worker threads, listeners, signals, graceful shutdown); per connection the
//! request loop (`connection`), the steps between head and handler (`gate`), rate buckets and
//! connection caps (`limits`), idle connections (`idle`), reloadable state (`live`), the warning
//! for listeners open to anonymous writes (`exposure`).

mod app;
mod connection;
pub mod exposure;
pub mod gate;
mod idle;
pub mod limits;
pub mod live;
mod notify;
mod runtime;
mod shutdown;
mod token;

pub use app::{AdminEndpoints, App, Listener, ListenerSpec, Local, StartError};
pub use runtime::{Driver, choose_driver, run};
