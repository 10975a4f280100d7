//! `GET /v1/certificates`: the certificates meshd obtains by ACME, with
//! each one's state, issuer, expiry, last renewal and last error.

use crate::AdminState;
use axum::extract::State;
use axum::Json;
use meshd_acme::CertStatus;
use serde::Serialize;
use std::sync::Arc;

/// The answer of `GET /v1/certificates`.
#[derive(Debug, Serialize)]
pub struct CertificatesJson {
    /// Whether `[acme]` is on.
    pub acme: bool,
    /// Every host ACME manages, by name.
    pub certificates: Vec<CertStatus>,
}

/// `GET /v1/certificates`.
pub(crate) async fn list(State(state): State<Arc<AdminState>>) -> Json<CertificatesJson> {
    Json(CertificatesJson {
        acme: state.certificates.is_some(),
        certificates: state
            .certificates
            .as_ref()
            .map(|statuses| statuses.list())
            .unwrap_or_default(),
    })
}
