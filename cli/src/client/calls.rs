//! The shape of every client method, written once: `rpcs!` for a method
//! per RPC, and `service_calls!` for the service RPCs the agent and the
//! master both offer with the same requests (the two generated clients
//! share no trait). A client has fields `inner` (the generated client) and
//! `who` ("node rift", "master"), which its errors name.

/// Client methods, one per RPC: `pub fn name(args) -> View = rpc(request),
/// convert;` sends `request` and converts the answer.
macro_rules! rpcs {
    ($(
        $(#[$doc:meta])*
        pub fn $name:ident($($arg:ident: $ty:ty),*) -> $out:ty = $rpc:ident($req:expr), $convert:expr;
    )*) => {
        $(
            $(#[$doc])*
            pub async fn $name(&mut self, $($arg: $ty),*) -> Result<$out, $crate::client::error::RpcError> {
                let r = self.inner.$rpc($req).await;
                $crate::client::error::reply(&self.who, r, $convert)
            }
        )*
    };
}

/// The service RPCs both clients offer; `$answer` is what a deploy or an
/// operation answers with.
macro_rules! service_calls {
    ($answer:ty) => {
        rpcs! {
            /// Deploys `def`, or one of its components.
            pub fn deploy(def: &mcp_model::service::ServiceDef, component: Option<&str>, request_id: &str) -> $answer =
                deploy($crate::client::convert::deploy_request(def, component, request_id)), <$answer>::from;

            /// The `podman run` commands that reproduce a service.
            pub fn render(name: &str) -> $crate::view::Rendered =
                render_service($crate::client::convert::service_request(name, None, "")), $crate::view::Rendered::from;
        }

        /// Stops, starts, restarts or undeploys a service (or one component).
        pub async fn operate(
            &mut self,
            op: $crate::view::Op,
            name: &str,
            component: Option<&str>,
            request_id: &str,
        ) -> Result<$answer, $crate::client::error::RpcError> {
            use $crate::view::Op;
            let req = $crate::client::convert::service_request(name, component, request_id);
            let r = match op {
                Op::Stop => self.inner.stop_service(req).await,
                Op::Start => self.inner.start_service(req).await,
                Op::Restart => self.inner.restart_service(req).await,
                Op::Undeploy => self.inner.undeploy_service(req).await,
            };
            $crate::client::error::reply(&self.who, r, <$answer>::from)
        }

        /// Container output of a service (or one component), maybe followed.
        pub async fn logs(
            &mut self,
            query: &$crate::view::LogsQuery,
        ) -> Result<$crate::client::logs::LogStream, $crate::client::error::RpcError> {
            let r = self
                .inner
                .logs($crate::client::convert::logs_request(query))
                .await;
            let who = self.who.clone();
            $crate::client::error::reply(&self.who, r, |s| $crate::client::logs::LogStream::new(who, s))
        }
    };
}
