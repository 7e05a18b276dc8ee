//! Request and response bodies at the boundary: read whole within a size, time and shared
//! memory budget, or streamed with a limit and without trailers. What may cross (headers,
//! paths, chains) is decided by the pure `crate::hygiene`.

use axum::body::Body;
use bytes::Bytes;
use http::header::HeaderValue;
use http_body_util::{BodyExt, Limited};

/// Reads a whole request body, refusing more than `limit` bytes.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, BodyError> {
    read_body_within(body, limit, std::time::Duration::from_secs(3600)).await
}

/// Reads a whole request body within `timeout` (slow-body attacks), refusing more than
/// `limit` bytes.
pub async fn read_body_within(
    body: Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, BodyError> {
    let read = tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await;
    let Ok(read) = read else {
        return Err(BodyError::Read(
            "the request body did not arrive in time".into(),
        ));
    };
    match read {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(BodyError::TooLarge)
            } else {
                Err(BodyError::Read(e.to_string()))
            }
        }
    }
}

#[derive(Debug)]
pub enum BodyError {
    TooLarge,
    Read(String),
    /// The whole body did not arrive in time.
    TimedOut,
    /// The shared buffering budget stayed exhausted for the whole time limit.
    Busy,
}

/// Reads a whole request body within `timeout` and `limit`, taking from `budget` one permit per
/// byte as the bytes arrive (a body only holds what it really buffers). The permits are
/// returned with the bytes and released when dropped. Trailers are dropped.
pub async fn read_body_budgeted(
    body: Body,
    limit: usize,
    timeout: std::time::Duration,
    budget: &std::sync::Arc<tokio::sync::Semaphore>,
) -> Result<(Bytes, Option<tokio::sync::OwnedSemaphorePermit>), BodyError> {
    let w = read_whole(body, limit, tokio::time::Instant::now() + timeout, budget).await?;
    Ok((w.bytes, w.permit))
}

/// A body read whole, with its trailers and the budget it holds.
pub struct Whole {
    pub bytes: Bytes,
    pub trailers: Option<http::HeaderMap>,
    pub permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Reads a whole body (a request's or a partner's response) by `deadline`, refusing more than
/// `limit` bytes and taking one permit of `budget` per byte as the bytes arrive; keeps the
/// trailers (the last trailers frame; a second one is an error).
pub async fn read_whole<B>(
    body: B,
    limit: usize,
    deadline: tokio::time::Instant,
    budget: &std::sync::Arc<tokio::sync::Semaphore>,
) -> Result<Whole, BodyError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
    let mut trailers = None;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(BodyError::TimedOut),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(BodyError::Read(e.to_string())),
            Ok(Some(Ok(f))) => f,
        };
        let d = match frame.into_data() {
            Ok(d) => d,
            Err(f) => {
                if let Ok(t) = f.into_trailers() {
                    if trailers.replace(t).is_some() {
                        return Err(BodyError::Read("two trailer sections".into()));
                    }
                }
                continue;
            }
        };
        if d.is_empty() {
            continue;
        }
        if trailers.is_some() {
            return Err(BodyError::Read("data after the trailers".into()));
        }
        if buf.len() + d.len() > limit {
            return Err(BodyError::TooLarge);
        }
        let n = u32::try_from(d.len()).map_err(|_| BodyError::TooLarge)?;
        let p = match tokio::time::timeout_at(deadline, budget.clone().acquire_many_owned(n)).await
        {
            Ok(Ok(p)) => p,
            _ => return Err(BodyError::Busy),
        };
        match held.as_mut() {
            Some(h) => h.merge(p),
            None => held = Some(p),
        }
        buf.extend_from_slice(&d);
    }
    Ok(Whole {
        bytes: buf.freeze(),
        trailers,
        permit: held,
    })
}

/// A whole body that keeps its share of the buffering budget until it has been sent.
pub fn body_holding(bytes: Bytes, permit: Option<tokio::sync::OwnedSemaphorePermit>) -> Body {
    Body::new(Holding {
        bytes: Some(bytes),
        _permit: permit,
    })
}

struct Holding {
    bytes: Option<Bytes>,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl http_body::Body for Holding {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let b = self.bytes.take().filter(|b| !b.is_empty());
        std::task::Poll::Ready(b.map(|b| Ok(http_body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.bytes.as_ref().is_none_or(|b| b.is_empty())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.bytes.as_ref().map_or(0, |b| b.len() as u64))
    }
}

/// Wraps a streaming body so that more than `limit` bytes end it with an error.
pub fn limit_body<B>(body: B, limit: usize) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Body::new(Limited::new(body, limit))
}

/// A request body passed on without its trailers: a peer's trailers are headers too, and
/// nothing filters them, so they do not cross.
pub fn without_trailers(body: Body) -> Body {
    Body::new(NoTrailers(body))
}

struct NoTrailers(Body);

impl http_body::Body for NoTrailers {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        loop {
            match std::pin::Pin::new(&mut self.0).poll_frame(cx) {
                std::task::Poll::Ready(Some(Ok(f))) if f.is_trailers() => continue,
                other => return other,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.size_hint()
    }
}

pub fn header(value: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn request_trailers_never_cross() {
        let mut t = http::HeaderMap::new();
        t.insert("x-smuggled", HeaderValue::from_static("secret"));
        let with = http_body_util::Full::new(Bytes::from_static(b"data"))
            .map_err(|e| match e {})
            .with_trailers(async move { Some(Ok::<_, std::convert::Infallible>(t)) });
        let body = Body::new(with);
        let c = without_trailers(body).collect().await.unwrap();
        assert!(c.trailers().is_none());
        assert_eq!(c.to_bytes(), Bytes::from_static(b"data"));
    }
}
