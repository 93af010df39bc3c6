//! The object-store side of the S3 backend (issue 18, in progress): the bucket as wharf sees it
//! (`ObjectStore`: put, conditional put, get, head, conditional delete, paged listing), requests
//! signed with `rusty-s3` (SigV4, no I/O of its own) and sent over wharf's own HTTP/1.1 client
//! (`crate::client`, keep-alive connections per worker). Not yet a `Backend` of `Storage`.

pub mod api;
