//! Routing: what each message is answered with.
//!
//! The server asks a [`Handler`] for a [`Route`]: an answer now, or work that runs off the recv
//! loop (a script, say) and answers when done. [`Router`] is the handler built from the config.

use crate::config::Config;
use crate::message::{Event, Kind, Message};
use crate::reply::Reply;

/// Work that produces a reply later, run on its own thread so no other request waits for it.
pub type Job = Box<dyn FnOnce() -> Reply + Send + 'static>;

/// How a message is answered.
pub enum Route {
    /// The reply is ready.
    Now(Reply),
    /// The reply needs slow work (at most ~14 s; WeChat's three tries are used to wait for it).
    Later(Job),
}

/// Decides the answer to a message. Implementations must be cheap for [`Route::Now`] answers:
/// they run on a recv-loop thread.
pub trait Handler: Send + Sync {
    /// The route for `msg`.
    fn route(&self, msg: &Message) -> Route;
}

/// The handler built from `wxmp.toml`.
#[derive(Debug, Clone)]
pub struct Router {
    default: String,
    welcome: String,
}

impl Router {
    /// Builds the router from the configuration; every problem is listed.
    pub fn from_config(config: &Config) -> Result<Router, Vec<String>> {
        Ok(Router {
            default: config.reply.default.clone(),
            welcome: config.reply.welcome.clone(),
        })
    }
}

impl Handler for Router {
    fn route(&self, msg: &Message) -> Route {
        Route::Now(match &msg.kind {
            Kind::Event(Event::Subscribe { .. }) => Reply::Text(self.welcome.clone()),
            Kind::Event(_) => Reply::Success,
            _ => Reply::Text(self.default.clone()),
        })
    }
}
