//! The gateway's HTTP/1.1 server: accepts connections, sends the invocation routes (nearly all
//! traffic) straight to the [`Proxy`], and everything else (the model list, wrong methods and
//! unknown paths, the management API) through the axum router. The router alone would answer
//! the same; matching the invocation paths by hand spares each query the router's matching,
//! its path-parameter extraction and the connection address stored as a request extension.
//!
//! Shutdown: when `shutdown` resolves no connection is accepted any more, idle kept-open
//! connections are closed, and the call returns once every in-flight answer has ended.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request};
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use super::proxy::Proxy;

/// One of the invocation routes, as the proxy takes it.
#[derive(Debug, PartialEq, Eq)]
pub struct Invocation {
    /// The endpoint named in the path (`None`: an OpenAI route names it in the body).
    pub endpoint: Option<String>,
    /// The entity named in the path, for a query to one entity.
    pub entity: Option<String>,
    /// The path the pod is called on.
    pub upstream_path: &'static str,
}

/// The invocation route `method` and `path` ask for, when it is one. `None` leaves the request
/// to the router, which also answers what this does not take: other methods (405), paths with
/// percent-escapes (it decodes them), empty or extra segments (404).
pub fn invocation(method: &Method, path: &str) -> Option<Invocation> {
    if method != Method::POST || path.contains('%') {
        return None;
    }
    let mut segments = path.strip_prefix('/')?.split('/');
    let first = segments.next()?;
    let rest: [&str; 4] = {
        let mut rest = [""; 4];
        for (index, segment) in segments.enumerate() {
            if index == rest.len() || segment.is_empty() {
                return None;
            }
            rest[index] = segment;
        }
        rest
    };
    let call = |endpoint: Option<&str>, entity: Option<&str>, upstream_path| {
        Some(Invocation {
            endpoint: endpoint.map(str::to_string),
            entity: entity.map(str::to_string),
            upstream_path,
        })
    };
    match (first, rest) {
        ("serving-endpoints", ["v1", "chat", "completions", ""]) => {
            call(None, None, "/v1/chat/completions")
        }
        ("serving-endpoints", ["v1", "completions", "", ""]) => call(None, None, "/v1/completions"),
        ("serving-endpoints", ["v1", "embeddings", "", ""]) => call(None, None, "/v1/embeddings"),
        ("serving-endpoints", [name, "invocations", "", ""]) => {
            call(Some(name), None, "/invocations")
        }
        ("serving-endpoints", [name, "served-models", entity, "invocations"]) => {
            call(Some(name), Some(entity), "/invocations")
        }
        // MLflow AI Gateway's route: the endpoint its MLflow name maps to.
        ("endpoints", [name, "invocations", "", ""]) => Some(Invocation {
            endpoint: Some(
                sluice_contract::mlflow::endpoint_name(name).unwrap_or_else(|| name.to_string()),
            ),
            entity: None,
            upstream_path: "/invocations",
        }),
        _ => None,
    }
}

/// What answers the requests of one connection.
#[derive(Clone)]
struct Dispatch {
    proxy: Arc<Proxy>,
    router: Router,
    peer: SocketAddr,
}

type Answer = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Dispatch {
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, request: Request<Incoming>) -> Answer {
        let request = request.map(Body::new);
        let peer = self.peer;
        match invocation(request.method(), request.uri().path()) {
            Some(route) => {
                let proxy = self.proxy.clone();
                Box::pin(async move {
                    Ok(proxy
                        .handle(
                            route.endpoint,
                            route.entity,
                            route.upstream_path,
                            peer,
                            request,
                        )
                        .await)
                })
            }
            None => {
                let mut request = request;
                request.extensions_mut().insert(ConnectInfo(peer));
                let mut router = self.router.clone();
                Box::pin(async move { tower_service::Service::call(&mut router, request).await })
            }
        }
    }
}

/// Serves `listener` until `shutdown` resolves, then drains (see the module docs).
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    router: Router,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Streamed tokens and small answers leave at once.
        let _ = stream.set_nodelay(true);
        let dispatch = Dispatch {
            proxy: proxy.clone(),
            router: router.clone(),
            peer,
        };
        let connection = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), dispatch);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "client connection ended");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: Method, path: &str) -> Option<(Option<String>, Option<String>, &str)> {
        invocation(&method, path).map(|i| (i.endpoint, i.entity, i.upstream_path))
    }

    fn some(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    #[test]
    fn the_invocation_routes_are_matched_as_the_router_would() {
        assert_eq!(
            route(Method::POST, "/serving-endpoints/iris/invocations"),
            Some((some("iris"), None, "/invocations"))
        );
        assert_eq!(
            route(Method::POST, "/serving-endpoints/ns.iris/invocations"),
            Some((some("ns.iris"), None, "/invocations"))
        );
        assert_eq!(
            route(
                Method::POST,
                "/serving-endpoints/iris/served-models/iris-2/invocations"
            ),
            Some((some("iris"), some("iris-2"), "/invocations"))
        );
        for (path, upstream) in [
            (
                "/serving-endpoints/v1/chat/completions",
                "/v1/chat/completions",
            ),
            ("/serving-endpoints/v1/completions", "/v1/completions"),
            ("/serving-endpoints/v1/embeddings", "/v1/embeddings"),
        ] {
            assert_eq!(route(Method::POST, path), Some((None, None, upstream)));
        }
        // An endpoint named v1 is still an endpoint.
        assert_eq!(
            route(Method::POST, "/serving-endpoints/v1/invocations"),
            Some((some("v1"), None, "/invocations"))
        );
        assert_eq!(
            route(Method::POST, "/endpoints/chat/invocations"),
            Some((
                sluice_contract::mlflow::endpoint_name("chat").or(some("chat")),
                None,
                "/invocations"
            ))
        );
    }

    #[test]
    fn everything_else_is_left_to_the_router() {
        for path in [
            "/serving-endpoints/iris/invocations/",
            "/serving-endpoints//invocations",
            "/serving-endpoints/ir%69s/invocations",
            "/serving-endpoints/iris",
            "/serving-endpoints/iris/served-models/invocations",
            "/serving-endpoints/iris/served-models/a/b/invocations",
            "/serving-endpoints/v1/models",
            "/serving-endpoints/v1/chat/completions/x",
            "/api/2.0/serving-endpoints/iris",
            "/invocations",
            "/",
            "",
        ] {
            assert_eq!(route(Method::POST, path), None, "{path}");
        }
        assert_eq!(
            route(Method::GET, "/serving-endpoints/iris/invocations"),
            None
        );
    }
}
