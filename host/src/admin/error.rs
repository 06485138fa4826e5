//! The admin API's errors: a status and a message for operators, answered as
//! `{"error": "<message>"}`, and how the router's and the registry's refusals map onto statuses.
//!
//! Apart from the routes so that the token check ([`super::auth`]) and the routes
//! ([`super::api`]) both answer with it without importing each other.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::control::ControlError;
use crate::plugin::registry::SwapError;
use crate::route::WeightError;

/// An API error: a status and a message for operators.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

/// The body of every error answer.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub error: &'a str,
}

/// Why a request was refused, carried on the response so the routes' refusal log can log it.
#[derive(Debug, Clone)]
pub struct Refusal(pub String);

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: &self.message,
        };
        let mut response = (self.status, Json(body)).into_response();
        response.extensions_mut().insert(Refusal(self.message));
        response
    }
}

impl From<WeightError> for ApiError {
    fn from(error: WeightError) -> Self {
        let status = match &error {
            WeightError::UnknownChannel(_) => StatusCode::NOT_FOUND,
            WeightError::UnknownVendor { .. } | WeightError::AllZero(_) => StatusCode::BAD_REQUEST,
            WeightError::Persist { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, error.to_string())
    }
}

impl From<SwapError> for ApiError {
    fn from(error: SwapError) -> Self {
        let status = match &error {
            SwapError::UnknownPlugin(_) | SwapError::UnknownVersion { .. } => StatusCode::NOT_FOUND,
            SwapError::Load(_) | SwapError::WrongChannel { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            SwapError::NothingToRollBack(_) | SwapError::AlreadyActive { .. } => {
                StatusCode::CONFLICT
            }
            SwapError::BadPercent(_) => StatusCode::BAD_REQUEST,
            SwapError::Store { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, error.to_string())
    }
}

impl From<ControlError> for ApiError {
    fn from(error: ControlError) -> Self {
        match error {
            ControlError::Swap(error) => error.into(),
            ControlError::Weight(error) => error.into(),
            ControlError::Write(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
            }
            ControlError::NotApplied { .. } => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, error.to_string())
            }
            ControlError::RefusedHere { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, error.to_string())
            }
        }
    }
}
