//! Typed identifiers.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

macro_rules! id_type {
    ($name:ident, $what:literal) => {
        #[doc = concat!("Identifier of a ", $what, ".")]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new, time-ordered identifier.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

id_type!(WorkflowId, "workflow");
id_type!(TaskId, "task");
id_type!(TenantId, "tenant (project)");
id_type!(UserId, "user");
id_type!(ApiKeyId, "API key");

impl TenantId {
    /// The tenant created on first start, which owns the bootstrap admin; its admins manage every tenant.
    pub const SYSTEM: TenantId = TenantId(Uuid::from_u128(1));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_strings() {
        let id = WorkflowId::new();
        assert_eq!(id.to_string().parse::<WorkflowId>().unwrap(), id);
        assert!("not-a-uuid".parse::<TaskId>().is_err());
    }
}
