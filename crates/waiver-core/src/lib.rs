//! The pure domain core of waiver.
//!
//! An exception to access policy is a governed control object: owned, approved by someone
//! accountable, narrowly scoped, guarded by compensating controls and expiring by
//! construction. This crate holds its types, the rules that govern it and the lifecycle that
//! moves it, plus the hashing of the audit chain every change lands in.
//!
//! Architecture invariant: nothing here does I/O or reads the clock. Every function that
//! depends on time takes `now` as an argument, so every rule is testable at any instant.

/// Declares a closed set of names with their wire spelling, parsing and display.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses the wire name; the error lists the accepted ones.
            pub fn parse(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!(
                        "`{}` is not a {}; expected one of {}",
                        crate::id::clip(s),
                        $what,
                        [$(concat!("`", $text, "`")),+].join(", ")
                    )),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub mod actor;
pub mod audit;
pub mod canonical;
pub mod clock;
pub mod error;
pub mod exception;
pub mod frameworks;
pub mod id;
pub mod identity;
pub mod lifecycle;
pub mod period;
pub mod rules;
pub mod schedule;
pub mod text;

pub use actor::{Actor, Authentication, Role, RoleSet};
pub use clock::{Clock, ManualClock};
pub use error::{FieldError, LifecycleError, ValidationError};
pub use exception::{
    Approval, CompensatingControl, ControlKind, CredentialType, Exception, ExceptionDraft, Kind, PendingRenewal,
    PendingTransfer, PostUseReview, Remediation, ResourceScope, RevalidationTrigger, Review, Risk, Scope, State, Terms,
    Waived,
};
pub use id::{EntityRef, EntityType, ExceptionId, PolicyId, Principal};
pub use identity::{Identity, IdentityKind, IdentityStatus};
pub use jiff::{SignedDuration, Timestamp};
pub use period::Period;
pub use rules::{FollowUp, Rules, StepUp};
