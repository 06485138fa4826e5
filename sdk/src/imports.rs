//! The host functions as the rest of the SDK calls them: the component's imports on the wasm
//! target, and the [`crate::native::NativeHost`] installed on the thread everywhere else.
//!
//! Must never: change what a component does. The wasm half passes every call straight to the
//! generated import.

#[cfg(target_arch = "wasm32")]
pub(crate) use self::component::*;
#[cfg(not(target_arch = "wasm32"))]
pub(crate) use self::in_process::*;

#[cfg(target_arch = "wasm32")]
mod component {
    use crate::bindings::switchboard::adapter::{cache, http, log, secrets};
    use crate::http::{HttpError, Request, Response};
    use crate::log::Level;

    pub(crate) fn send(request: Request) -> Result<Response, HttpError> {
        http::send(&request)
    }

    pub(crate) fn send_all(requests: Vec<Request>) -> Vec<Result<Response, HttpError>> {
        http::send_all(&requests)
    }

    pub(crate) fn sign(key: &str, alg: &str, data: &[u8]) -> Result<Vec<u8>, String> {
        secrets::sign(key, alg, data)
    }

    pub(crate) fn cache_get(key: &str) -> Option<Vec<u8>> {
        cache::get(key)
    }

    pub(crate) fn cache_set(key: &str, value: &[u8], ttl_ms: u64) {
        cache::set(key, value, ttl_ms)
    }

    pub(crate) fn log(level: Level, message: &str) {
        log::log(level, message)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod in_process {
    use crate::http::{HttpError, Request, Response};
    use crate::log::Level;
    use crate::native::installed;

    pub(crate) fn send(request: Request) -> Result<Response, HttpError> {
        installed(|host| host.send(request))
    }

    pub(crate) fn send_all(requests: Vec<Request>) -> Vec<Result<Response, HttpError>> {
        installed(|host| host.send_all(requests))
    }

    pub(crate) fn sign(key: &str, alg: &str, data: &[u8]) -> Result<Vec<u8>, String> {
        installed(|host| host.sign(key, alg, data))
    }

    pub(crate) fn cache_get(key: &str) -> Option<Vec<u8>> {
        installed(|host| host.cache_get(key))
    }

    pub(crate) fn cache_set(key: &str, value: &[u8], ttl_ms: u64) {
        installed(|host| host.cache_set(key, value, ttl_ms))
    }

    pub(crate) fn log(level: Level, message: &str) {
        installed(|host| host.log(level, message))
    }
}
