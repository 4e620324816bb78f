//! HTTP proxying: matching, filters, splitting, retries and the request phases.

pub(crate) mod body;
pub(crate) mod callout;
pub(crate) mod chain;
pub(crate) mod chain_handlers;
pub(crate) mod filters;
pub(crate) mod head;
pub(crate) mod inline;
pub(crate) mod local_reply;
pub(crate) mod proxy;
pub(crate) mod published_events;
pub(crate) mod record;
pub(crate) mod retry;
pub(crate) mod route_match;
pub(crate) mod split;

#[cfg(test)]
mod tests;
