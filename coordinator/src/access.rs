//! Who may do what on the StudyService: the caller as the TLS layer and the consortium identify it, and the pure
//! rule that decides each call.
//!
//! Without a consortium file every caller is [`Caller::Open`] and everything is allowed (the demo and loopback
//! tests). With one, a caller is the member whose key its mutual-TLS certificate certifies: a researcher manages
//! (creates, opens, starts, stops, downloads, watches) only the studies it created; an auditor reads (status and
//! events of any study, and the AuditService) and writes nothing; other roles have no business on the
//! StudyService.

use pdc_ledger::entry::Role;

use crate::{Error, Result};

/// A StudyService or AuditService caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No consortium is configured: the call is not tied to a member and is allowed.
    Open,
    /// The consortium member the caller's certificate certifies.
    Member {
        /// Its id.
        id: String,
        /// Its role.
        role: Role,
    },
}

impl Caller {
    /// The member's id, if the caller is one.
    pub fn member_id(&self) -> Option<&str> {
        match self {
            Caller::Open => None,
            Caller::Member { id, .. } => Some(id),
        }
    }
}

/// What a StudyService call does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StudyAction {
    /// CreateStudy.
    Create,
    /// OpenRecruiting, StartStudy, StopStudy: a change to a study.
    Manage,
    /// DownloadModel: the study's product.
    Download,
    /// GetStatus, WatchStudy.
    Read,
    /// Feasibility: asks every hospital to spend privacy budget.
    Feasibility,
}

impl StudyAction {
    fn describe(self) -> &'static str {
        match self {
            StudyAction::Create => "create a study",
            StudyAction::Manage => "manage a study",
            StudyAction::Download => "download a study's model",
            StudyAction::Read => "read a study's status",
            StudyAction::Feasibility => "ask a feasibility query",
        }
    }
}

/// Decides whether `caller` may do `action` on a study owned by `owner` (`None` for a study created without a
/// consortium, or for actions on no study).
pub fn authorize(caller: &Caller, action: StudyAction, owner: Option<&str>) -> Result<()> {
    let (id, role) = match caller {
        Caller::Open => return Ok(()),
        Caller::Member { id, role } => (id, *role),
    };
    match (role, action) {
        (Role::Researcher, StudyAction::Create | StudyAction::Feasibility) => Ok(()),
        (Role::Researcher, _) if owner == Some(id.as_str()) => Ok(()),
        (Role::Researcher, _) => Err(Error::PermissionDenied(format!(
            "researcher {id} may not {}: a researcher manages only its own studies, and this one is {}",
            action.describe(),
            match owner {
                Some(owner) => format!("{owner}'s"),
                None => "no researcher's".into(),
            }
        ))),
        (Role::Auditor, StudyAction::Read) => Ok(()),
        (Role::Auditor, _) => {
            Err(Error::PermissionDenied(format!("auditor {id} reads only; it may not {}", action.describe())))
        }
        (role, _) => Err(Error::PermissionDenied(format!(
            "{id} is a {} of the consortium; the StudyService is for researchers and auditors",
            role.name()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, role: Role) -> Caller {
        Caller::Member { id: id.into(), role }
    }

    #[test]
    fn researchers_manage_their_own_studies_and_auditors_only_read() {
        use StudyAction::*;
        let all = [Create, Manage, Download, Read, Feasibility];
        for action in all {
            authorize(&Caller::Open, action, Some("alice")).unwrap();
            authorize(&member("alice", Role::Researcher), action, Some("alice")).unwrap();
        }
        let bob = member("bob", Role::Researcher);
        authorize(&bob, Create, None).unwrap();
        authorize(&bob, Feasibility, None).unwrap();
        for action in [Manage, Download, Read] {
            let error = authorize(&bob, action, Some("alice")).unwrap_err();
            assert!(matches!(error, Error::PermissionDenied(_)));
            assert!(error.to_string().contains("manages only its own studies, and this one is alice's"), "{error}");
        }
        let error = authorize(&bob, Manage, None).unwrap_err().to_string();
        assert!(error.ends_with("this one is no researcher's"), "{error}");

        let carol = member("carol", Role::Auditor);
        authorize(&carol, Read, Some("alice")).unwrap();
        for action in [Create, Manage, Download, Feasibility] {
            let error = authorize(&carol, action, Some("alice")).unwrap_err().to_string();
            assert!(error.starts_with("auditor carol reads only"), "{error}");
        }
        for role in [Role::Hospital, Role::Witness, Role::Coordinator] {
            for action in all {
                let error = authorize(&member("h", role), action, Some("h")).unwrap_err().to_string();
                assert!(error.contains("the StudyService is for researchers and auditors"), "{error}");
            }
        }
    }
}
