//! The GraphiQL playground, its assets compiled into the binary so it works with no internet access.

use axum::http::header;
use axum::response::{Html, IntoResponse};

const INDEX: &str = include_str!("../../web-playground/dist/index.html");
const SCRIPT: &str = include_str!("../../web-playground/dist/playground.js");
const STYLE: &str = include_str!("../../web-playground/dist/playground.css");

pub async fn index() -> impl IntoResponse {
    Html(INDEX)
}

pub async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        SCRIPT,
    )
}

pub async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=3600")], STYLE)
}
