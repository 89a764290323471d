//! Size limits on what the API accepts into replicated state. Every byte accepted is carried
//! by every agent (and gossiped, and journaled, by each), so each record kind has a ceiling,
//! and a write over it is refused with `413` naming the limit, before anything is written.
//! KV values have Consul's own (`murmur_catalog::kv::MAX_VALUE_BYTES`, 512 KiB); check
//! outputs are cut to 4 KiB, as Consul cuts them.

use axum::http::StatusCode;

use super::ApiError;

/// A ceiling on one kind of write, as the client sends it (its JSON body).
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    /// What is limited, as the error names it.
    pub what: &'static str,
    /// The most bytes it may take.
    pub max: usize,
    /// What to do about it.
    pub hint: &'static str,
}

/// A service registration (`/v1/agent/service/register`), with its checks.
pub const SERVICE: Limit = Limit {
    what: "a service registration",
    max: 64 * 1024,
    hint: "trim its tags, meta and checks",
};
/// A check registration (`/v1/agent/check/register`).
pub const CHECK: Limit = Limit {
    what: "a check registration",
    max: 16 * 1024,
    hint: "shorten its notes, headers or arguments",
};
/// A TTL check's update (`/v1/agent/check/update/:id`); the output kept is cut to 4 KiB.
pub const CHECK_UPDATE: Limit = Limit {
    what: "a check update",
    max: 64 * 1024,
    hint: "send less output (4 KiB of it is kept)",
};
/// An intention (`/v1/connect/intentions…`).
pub const INTENTION: Limit = Limit {
    what: "an intention",
    max: 8 * 1024,
    hint: "shorten its description and meta",
};
/// A catalog registration (`/v1/catalog/register`): a node, a service and checks.
pub const CATALOG_REGISTRATION: Limit = Limit {
    what: "a catalog registration",
    max: 64 * 1024,
    hint: "trim the node's meta and the service's tags, meta and checks",
};
/// A prepared query definition (`/v1/query`).
pub const PREPARED_QUERY: Limit = Limit {
    what: "a prepared query",
    max: 64 * 1024,
    hint: "trim its tags and meta",
};
/// An agent's whole node record (all its services and checks), as JSON: one replicated value,
/// which must fit an anti-entropy message (1 MiB) with room to spare.
pub const NODE_RECORD: Limit = Limit {
    what: "this agent's node record (all its services and checks)",
    max: 512 * 1024,
    hint: "register fewer or smaller services on this agent",
};

impl Limit {
    /// `Ok` when `size` bytes fit, else the `413` to answer.
    pub fn check(&self, size: usize) -> Result<(), ApiError> {
        if size <= self.max {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} of {size} bytes is over the limit of {} bytes (every agent keeps a copy): {}",
                self.what, self.max, self.hint
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_over_its_limit_is_a_413_naming_the_limit() {
        assert!(INTENTION.check(8 * 1024).is_ok());
        let err = INTENTION.check(8 * 1024 + 1).unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(err.message.contains("8193 bytes"), "{}", err.message);
        assert!(
            err.message.contains("limit of 8192 bytes"),
            "{}",
            err.message
        );
    }
}
