//! HTTP proxying: matching, filters, splitting, retries and the request phases.

pub mod body;
pub mod callout;
pub mod chain;
pub mod chain_handlers;
pub mod filters;
pub mod head;
pub mod inline;
pub mod local_reply;
pub mod proxy;
pub mod published_events;
pub(crate) mod record;
pub mod retry;
pub mod route_match;
pub mod split;

#[cfg(test)]
mod tests;
