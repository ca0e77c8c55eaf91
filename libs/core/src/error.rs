//! One error type for the edge of every service, mapped to `tonic::Status` in one place.
//!
//! Each service keeps its own `thiserror` enum for its domain and converts into
//! [`ServiceError`] at the gRPC adapter. Client mistakes say exactly what was wrong
//! (`InvalidArgument` names the field); internal errors are logged here, once, with their cause
//! chain, and reach the client as a generic message.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed; `field` is the protobuf field path, e.g. `items[2].quantity`.
    #[error("invalid {field}: {message}")]
    InvalidArgument { field: String, message: String },
    #[error("{0} not found")]
    NotFound(String),
    /// The request is well-formed but the system is not in a state to accept it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A concurrent writer won (optimistic concurrency); the caller may reload and retry.
    #[error("{0}")]
    Conflict(String),
    /// A dependency is down; the caller may retry later.
    #[error("{0}")]
    Unavailable(String),
    /// A bounded resource (e.g. a queue of unpublished changes) is full; the caller may retry
    /// once it has drained.
    #[error("{0}")]
    ResourceExhausted(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ServiceError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::Conflict(_) => Code::Aborted,
            Self::Unavailable(_) => Code::Unavailable,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::Internal(_) => Code::Internal,
        }
    }
}

impl From<shop_fields::Invalid> for ServiceError {
    fn from(e: shop_fields::Invalid) -> Self {
        Self::InvalidArgument {
            field: e.field,
            message: e.message,
        }
    }
}

impl From<sqlx::Error> for ServiceError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => {
                Self::Unavailable("database unavailable".into())
            }
            other => Self::Internal(other.into()),
        }
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        match &e {
            ServiceError::Internal(cause) => {
                tracing::error!(error = ?cause, "internal error");
                Status::internal("internal error")
            }
            ServiceError::Unavailable(what) => {
                tracing::warn!(error = %what, "dependency unavailable");
                Status::unavailable(e.to_string())
            }
            _ => Status::new(e.code(), e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_names_the_field() {
        let status: Status =
            ServiceError::invalid("items[0].quantity", "must be at least 1").into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "invalid items[0].quantity: must be at least 1"
        );
    }

    #[test]
    fn resource_exhausted_keeps_its_message() {
        let status: Status = ServiceError::ResourceExhausted("queue x is full".into()).into();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), "queue x is full");
    }

    #[test]
    fn internal_errors_do_not_leak_their_cause() {
        let status: Status =
            ServiceError::Internal(anyhow::anyhow!("password=hunter2 in connection string")).into();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("hunter2"));
    }
}
