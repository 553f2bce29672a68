//! The lifecycle of a document with each of its recipients, as Decree 30's
//! processes make it: sent → delivered → 01 arrived → 03 accepted (or 02
//! refused) → 04 assigned → 05 in progress → 06 completed, and the
//! take-back exchange 13 (or a recall document) → 15 agreed / 16 refused.
//!
//! The state is not stored: it is folded, whenever it is asked for, from
//! what the gateway keeps anyway — the document's deliveries, the status
//! notices answering it, and the recall, update and replacement documents
//! referring to it — in the order the gateway accepted them. So a notice
//! that arrived before its document (over AMQP, from another gateway) is
//! applied as soon as the document is there, nothing is lost between two
//! tables, and a notice is judged by exactly the rules that judged it when
//! it came ([`apply`]).

use std::collections::BTreeMap;

use lienthong_proto::v1 as pb;

use crate::error::{Error, Reason, Result};
use crate::rows::{DeliveryRow, EventRow, MessageRow};
use crate::store::Store;
use lienthong_proto::v1::BusinessType;
use lienthong_types::Route;

/// Where a recipient's copy stands in its processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Processing {
    Sent,
    Delivered,
    Arrived,
    Accepted,
    Assigned,
    InProgress,
    Completed,
    /// 02: the recipient refused to register it (terminal).
    Refused,
    /// Recalled before it was delivered: taken out of the inbox (terminal).
    Withdrawn,
}

impl Processing {
    fn rank(self) -> u8 {
        match self {
            Processing::Sent => 0,
            Processing::Delivered => 1,
            Processing::Arrived => 2,
            Processing::Accepted => 3,
            Processing::Assigned => 4,
            Processing::InProgress => 5,
            Processing::Completed => 6,
            Processing::Refused | Processing::Withdrawn => 7,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Processing::Sent => "sent",
            Processing::Delivered => "delivered",
            Processing::Arrived => "arrived",
            Processing::Accepted => "accepted",
            Processing::Assigned => "assigned",
            Processing::InProgress => "in_progress",
            Processing::Completed => "completed",
            Processing::Refused => "refused",
            Processing::Withdrawn => "withdrawn",
        }
    }

    fn of_code(code: &str) -> Option<Processing> {
        Some(match code {
            "01" => Processing::Arrived,
            "02" => Processing::Refused,
            "03" => Processing::Accepted,
            "04" => Processing::Assigned,
            "05" => Processing::InProgress,
            "06" => Processing::Completed,
            _ => return None,
        })
    }
}

/// Where a take-back (13, or a recall document) stands with a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recall {
    Requested,
    Agreed,
    Refused,
}

/// One recipient's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientState {
    pub processing: Processing,
    pub recall: Option<Recall>,
    pub last_code: String,
    pub updated_at: i64,
}

impl RecipientState {
    pub fn new(at: i64) -> RecipientState {
        RecipientState {
            processing: Processing::Sent,
            recall: None,
            last_code: String::new(),
            updated_at: at,
        }
    }

    /// Still expected to move on: not completed, refused, withdrawn or
    /// given back.
    pub fn is_open(&self) -> bool {
        !matches!(
            self.processing,
            Processing::Completed | Processing::Refused | Processing::Withdrawn
        ) && self.recall != Some(Recall::Agreed)
    }

    /// The state as `DocumentStatus` shows it.
    pub fn label(&self) -> &'static str {
        match (self.processing, self.recall) {
            (Processing::Withdrawn, _) => "withdrawn",
            (_, Some(Recall::Agreed)) => "recall_agreed",
            (_, Some(Recall::Requested)) => "recall_requested",
            (_, Some(Recall::Refused)) => "recall_refused",
            (p, None) => p.as_str(),
        }
    }
}

/// What a notice does to a recipient's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Changed(RecipientState),
    /// The same notice again: accepted, nothing changes.
    Repeat,
    /// A notice for an earlier step after a later one (05 after 06): kept
    /// in the trail, the state is not reopened.
    Stale,
}

/// Whether `code` (from the recipient, or 13 from the sender) may follow
/// `state`, and what it makes of it. `recalled`: the sender recalled the
/// document (its copy is frozen); `doc`: how to name the document in a
/// sentence.
pub fn apply(
    state: &RecipientState,
    code: &str,
    at: i64,
    recalled: bool,
    recipient: &str,
    doc: &str,
) -> Result<Outcome> {
    let changed = |s: RecipientState| {
        Outcome::Changed(RecipientState {
            updated_at: at,
            last_code: code.to_owned(),
            ..s
        })
    };
    if state.processing == Processing::Withdrawn {
        return Err(Error::malformed(format!(
            "{doc} was recalled before it reached {recipient} and taken out of its inbox; {recipient} \
             has no copy to send status {code} about"
        )));
    }
    match code {
        "13" => {
            if recalled {
                return Err(Error::malformed(format!(
                    "{doc} was recalled by its sender: its copy is frozen, there is nothing left to take back"
                )));
            }
            match state.recall {
                Some(Recall::Requested) => Ok(Outcome::Repeat),
                Some(Recall::Agreed) => Err(Error::malformed(format!(
                    "{recipient} already agreed (15) to give back {doc}"
                ))),
                _ => Ok(changed(RecipientState {
                    recall: Some(Recall::Requested),
                    ..state.clone()
                })),
            }
        }
        "15" | "16" => match state.recall {
            Some(Recall::Requested) => Ok(changed(RecipientState {
                recall: Some(if code == "15" {
                    Recall::Agreed
                } else {
                    Recall::Refused
                }),
                ..state.clone()
            })),
            Some(Recall::Agreed) if code == "15" => Ok(Outcome::Repeat),
            Some(Recall::Refused) if code == "16" => Ok(Outcome::Repeat),
            Some(r) => Err(Error::malformed(format!(
                "{recipient} already answered the take-back of {doc} ({}); status {code} cannot change that answer",
                if r == Recall::Agreed {
                    "15, agreed"
                } else {
                    "16, refused"
                }
            ))),
            None => Err(Error::malformed(format!(
                "status {code} answers a take-back or recall, but the sender of {doc} asked none of {recipient} \
                 (no status 13 and no recall document); send 15 or 16 only in answer to one"
            ))),
        },
        _ => {
            let Some(next) = Processing::of_code(code) else {
                return Err(Error::malformed(format!(
                    "status code {code:?} is not one of 01, 02, 03, 04, 05, 06, 13, 15, 16"
                )));
            };
            if recalled || state.recall == Some(Recall::Agreed) {
                return Err(Error::malformed(format!(
                    "{doc} was recalled by its sender; {recipient} can only answer the recall (15 agreed, \
                     16 refused), not send status {code}"
                )));
            }
            if state.processing == Processing::Refused {
                return if next == Processing::Refused {
                    Ok(Outcome::Repeat)
                } else {
                    Err(Error::malformed(format!(
                        "{recipient} refused (02) {doc}; a refused document is not processed further, so \
                         status {code} cannot follow"
                    )))
                };
            }
            if state.processing == Processing::Sent
                && next.rank() >= Processing::Assigned.rank()
                && next != Processing::Refused
            {
                return Err(Error::malformed(format!(
                    "status {code} says {recipient} is processing {doc}, but it has not been delivered to \
                     {recipient} yet; a document is first received (01) and registered (03)"
                )));
            }
            let later = next == Processing::Refused || next.rank() > state.processing.rank();
            if later {
                // Moving on settles a refused take-back.
                let recall = if state.recall == Some(Recall::Refused) {
                    None
                } else {
                    state.recall
                };
                Ok(changed(RecipientState {
                    processing: next,
                    recall,
                    ..state.clone()
                }))
            } else if next == state.processing {
                Ok(Outcome::Repeat)
            } else {
                Ok(Outcome::Stale)
            }
        }
    }
}

/// A document's lifecycle, folded from the gateway's records.
#[derive(Debug, Clone)]
pub struct DocumentLifecycle {
    pub document: MessageRow,
    pub recalled_at: Option<i64>,
    pub recipients: BTreeMap<String, Recipient>,
}

#[derive(Debug, Clone)]
pub struct Recipient {
    pub route: Route,
    pub state: RecipientState,
    pub steps: Vec<pb::LifecycleStep>,
}

impl Recipient {
    /// The state a notice from the recipient is judged against. A copy for
    /// another gateway or a queue counts as delivered once anything comes
    /// back from its recipient: the broker's confirm and the recipient's
    /// first notices can cross.
    pub fn as_seen_by_notice(&self) -> RecipientState {
        if !self.route.is_local() && self.state.processing == Processing::Sent {
            RecipientState {
                processing: Processing::Delivered,
                ..self.state.clone()
            }
        } else {
            self.state.clone()
        }
    }
}

/// What the fold reads: the document, its deliveries, the statuses
/// answering it and the documents referring to it, each with the
/// recipients of its own deliveries (for 13 and recalls).
pub struct Records {
    pub document: MessageRow,
    pub deliveries: Vec<DeliveryRow>,
    /// Statuses answering the document, in acceptance order, with the
    /// recipients they were addressed to.
    pub statuses: Vec<(MessageRow, Vec<String>)>,
    /// Recall, update and replacement documents referring to it, in
    /// acceptance order, with their recipients.
    pub referring: Vec<(MessageRow, Vec<String>)>,
    /// Its `overdue` transfer-log events.
    pub overdue: Vec<EventRow>,
}

/// Reads what the fold needs of `document` and folds it.
pub async fn of_document(store: &Store, document: MessageRow) -> Result<DocumentLifecycle> {
    let deliveries = store.deliveries_of(document.id).await?;
    let mut statuses = Vec::new();
    for m in store
        .statuses_answering(&document.sender, &document.document_id)
        .await?
    {
        let to = if m.status_code.as_deref() == Some("13") {
            recipients_of(store, m.id).await?
        } else {
            Vec::new()
        };
        statuses.push((m, to));
    }
    let mut referring = Vec::new();
    for m in store
        .documents_referring(&document.sender, &document.document_id)
        .await?
    {
        let to = recipients_of(store, m.id).await?;
        referring.push((m, to));
    }
    let overdue = store
        .overdue_events(&document.sender, &document.message_id)
        .await?;
    Ok(DocumentLifecycle::fold(Records {
        document,
        deliveries,
        statuses,
        referring,
        overdue,
    }))
}

async fn recipients_of(store: &Store, pk: i64) -> Result<Vec<String>> {
    Ok(store
        .deliveries_of(pk)
        .await?
        .into_iter()
        .map(|d| d.recipient)
        .collect())
}

/// When a recipient is late (`[lifecycle]`): accepting (03) within so many
/// working hours by priority, and completing (06) by the DueDate.
#[derive(Debug, Clone, PartialEq)]
pub struct Deadlines {
    /// Priority (0 normal … 4 scheduled express) → working hours.
    pub accept_within_hours: BTreeMap<i32, f64>,
    /// Documents older than this are no longer watched.
    pub watch_days: i64,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            // hỏa tốc and hẹn giờ: 2 working hours; thượng khẩn: 4; khẩn: 8
            // (a working day). Normal documents: their DueDate only.
            accept_within_hours: BTreeMap::from([(1, 8.0), (2, 4.0), (3, 2.0), (4, 2.0)]),
            watch_days: 60,
        }
    }
}

/// The Vietnamese name of a priority, for sentences.
pub fn priority_name(p: i32) -> &'static str {
    match p {
        1 => "khẩn (urgent)",
        2 => "thượng khẩn (very urgent)",
        3 => "hỏa tốc (express)",
        4 => "hỏa tốc hẹn giờ (scheduled express)",
        _ => "thường (normal)",
    }
}

/// Which deadline an overdue event is about (its `reason`).
pub const OVERDUE_ACCEPT: &str = "accept";
pub const OVERDUE_DUE: &str = "due";

fn step(
    event: &str,
    state: &RecipientState,
    at: i64,
    message_id: &str,
    note: &str,
) -> pb::LifecycleStep {
    pb::LifecycleStep {
        event: event.to_owned(),
        state: state.label().to_owned(),
        at: Some(lienthong_types::timestamp(at)),
        message_id: message_id.to_owned(),
        note: note.to_owned(),
    }
}

impl DocumentLifecycle {
    pub fn fold(r: Records) -> DocumentLifecycle {
        let doc = &r.document;
        let name = format!("document {} of {}", doc.document_id, doc.sender);
        let mut recipients = BTreeMap::new();
        // Events in time order: deliveries' own steps first at their times,
        // then notices and recalls in acceptance order.
        for d in &r.deliveries {
            let mut st = RecipientState::new(d.created_at);
            let mut steps = vec![step("accepted", &st, d.created_at, &doc.message_id, "")];
            if d.state == "withdrawn" {
                st.processing = Processing::Withdrawn;
                st.updated_at = d.acked_at.unwrap_or(d.created_at);
                steps.push(step(
                    "withdrawn",
                    &st,
                    st.updated_at,
                    "",
                    "recalled before it was delivered; taken out of the inbox",
                ));
            } else if let Some(t) = d.last_delivered_at {
                st.processing = Processing::Delivered;
                st.updated_at = t;
                steps.push(step("delivered", &st, t, "", ""));
            }
            recipients.insert(
                d.recipient.clone(),
                Recipient {
                    route: d.route.clone(),
                    state: st,
                    steps,
                },
            );
        }
        // Merge statuses and referring documents by acceptance order (id).
        let mut items: Vec<(&MessageRow, &Vec<String>, bool)> = r
            .statuses
            .iter()
            .map(|(m, to)| (m, to, true))
            .chain(r.referring.iter().map(|(m, to)| (m, to, false)))
            .collect();
        items.sort_by_key(|(m, _, _)| m.id);
        let mut recalled_at = None;
        for (m, to, is_status) in items {
            if !is_status {
                if m.business_type != BusinessType::Recall as i32 {
                    continue;
                }
                if recalled_at.is_none() {
                    recalled_at = Some(m.accepted_at);
                }
                for who in to {
                    if let Some(rc) = recipients.get_mut(who)
                        && let Ok(Outcome::Changed(s)) =
                            apply(&rc.state, "13", m.accepted_at, false, who, &name)
                    {
                        {
                            rc.state = RecipientState {
                                last_code: String::new(),
                                ..s
                            };
                            rc.steps.push(step(
                                "recall",
                                &rc.state,
                                m.accepted_at,
                                &m.message_id,
                                "",
                            ));
                        }
                    }
                }
                continue;
            }
            let code = m.status_code.clone().unwrap_or_default();
            // 13 comes from the sender, to recipients; every other code from
            // a recipient about itself.
            let concerned: Vec<String> = if code == "13" {
                if m.sender != doc.sender {
                    continue;
                }
                to.clone()
            } else {
                vec![m.sender.clone()]
            };
            for who in concerned {
                let Some(rc) = recipients.get_mut(&who) else {
                    continue;
                };
                let recalled = recalled_at.is_some_and(|t| t <= m.accepted_at);
                match apply(
                    &rc.as_seen_by_notice(),
                    &code,
                    m.accepted_at,
                    recalled,
                    &who,
                    &name,
                ) {
                    Ok(Outcome::Changed(s)) => {
                        rc.state = s;
                        rc.steps
                            .push(step(&code, &rc.state, m.accepted_at, &m.message_id, ""));
                    }
                    Ok(Outcome::Repeat) => rc.steps.push(step(
                        &code,
                        &rc.state,
                        m.accepted_at,
                        &m.message_id,
                        "a repeat: nothing changed",
                    )),
                    Ok(Outcome::Stale) => rc.steps.push(step(
                        &code,
                        &rc.state,
                        m.accepted_at,
                        &m.message_id,
                        "after a later step: kept in the trail, the state is not reopened",
                    )),
                    // A notice carried before its document arrived, that the
                    // rules would have refused: shown, not applied.
                    Err(e) => rc.steps.push(step(
                        &code,
                        &rc.state,
                        m.accepted_at,
                        &m.message_id,
                        &format!("not applied: {}", e.message()),
                    )),
                }
            }
        }
        for e in &r.overdue {
            if let Some(rc) = e.recipient.as_ref().and_then(|w| recipients.get_mut(w)) {
                let st = rc.state.clone();
                rc.steps.push(step("overdue", &st, e.at, "", &e.detail));
            }
        }
        for rc in recipients.values_mut() {
            rc.steps
                .sort_by_key(|s| s.at.as_ref().map(|t| (t.seconds, t.nanos)));
        }
        DocumentLifecycle {
            document: r.document,
            recalled_at,
            recipients,
        }
    }

    /// The response of `Exchange.DocumentStatus`.
    pub fn to_pb(
        &self,
        links: Vec<pb::DocumentLink>,
        due_date: String,
    ) -> pb::DocumentStatusResponse {
        pb::DocumentStatusResponse {
            document_id: self.document.document_id.clone(),
            from: self.document.sender.clone(),
            message_id: self.document.message_id.clone(),
            state: if self.recalled_at.is_some() {
                "recalled"
            } else {
                "active"
            }
            .to_owned(),
            recipients: self
                .recipients
                .iter()
                .map(|(who, r)| pb::RecipientStatus {
                    organ_id: who.clone(),
                    state: r.state.label().to_owned(),
                    last_code: r.state.last_code.clone(),
                    updated_at: Some(lienthong_types::timestamp(r.state.updated_at)),
                    route: match &r.route {
                        Route::Queue(_) => "queue".to_owned(),
                        other => other.to_string(),
                    },
                    overdue: r.steps.iter().any(|s| s.event == "overdue") && r.state.is_open(),
                    steps: r.steps.clone(),
                })
                .collect(),
            links,
            due_date,
        }
    }
}

/// `PERMISSION_DENIED` for a notice from an agency that is neither a
/// recipient nor (for 13) the sender.
pub fn not_a_party(who: &str, code: &str, doc: &MessageRow) -> Error {
    if code == "13" {
        Error::new(
            Reason::PermissionDenied,
            format!(
                "only the sender of document {} ({}) may ask for it back (status 13); {who} is not its sender",
                doc.document_id, doc.sender
            ),
        )
    } else {
        Error::new(
            Reason::PermissionDenied,
            format!(
                "{who} was not a recipient of document {} of {}: only its recipients send status notices about it",
                doc.document_id, doc.sender
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(p: Processing) -> RecipientState {
        RecipientState {
            processing: p,
            ..RecipientState::new(0)
        }
    }

    fn go(s: &RecipientState, code: &str) -> Result<Outcome> {
        apply(s, code, 1, false, "B", "document D of A")
    }

    #[test]
    fn the_happy_path_and_its_repeats() {
        let mut s = st(Processing::Delivered);
        for (code, want) in [
            ("01", "arrived"),
            ("03", "accepted"),
            ("04", "assigned"),
            ("05", "in_progress"),
            ("06", "completed"),
        ] {
            match go(&s, code).unwrap() {
                Outcome::Changed(n) => s = n,
                other => panic!("{code}: {other:?}"),
            }
            assert_eq!(s.label(), want);
            assert_eq!(go(&s, code).unwrap(), Outcome::Repeat, "{code} again");
        }
        // A 05 after the 06 does not reopen it.
        assert_eq!(go(&s, "05").unwrap(), Outcome::Stale);
    }

    #[test]
    fn impossible_transitions_are_refused() {
        let sent = st(Processing::Sent);
        assert!(go(&sent, "04").is_err(), "04 before any delivery");
        assert!(
            matches!(go(&sent, "01"), Ok(Outcome::Changed(_))),
            "a remote recipient may say 01 before our confirm"
        );
        assert!(
            go(&st(Processing::Delivered), "15").is_err(),
            "15 without a take-back request"
        );
        assert!(go(&st(Processing::Delivered), "99").is_err());
        let refused = match go(&st(Processing::Arrived), "02").unwrap() {
            Outcome::Changed(s) => s,
            o => panic!("{o:?}"),
        };
        assert!(go(&refused, "05").is_err(), "processing after refusing");
        assert!(go(&st(Processing::Withdrawn), "01").is_err());
    }

    #[test]
    fn take_back_and_answers() {
        let s = st(Processing::InProgress);
        let asked = match go(&s, "13").unwrap() {
            Outcome::Changed(s) => s,
            o => panic!("{o:?}"),
        };
        assert_eq!(asked.label(), "recall_requested");
        let refused = match go(&asked, "16").unwrap() {
            Outcome::Changed(s) => s,
            o => panic!("{o:?}"),
        };
        assert_eq!(refused.label(), "recall_refused");
        assert!(go(&refused, "15").is_err(), "an answer cannot be changed");
        // Moving on after refusing the take-back.
        let done = match go(&refused, "06").unwrap() {
            Outcome::Changed(s) => s,
            o => panic!("{o:?}"),
        };
        assert_eq!(done.label(), "completed");
        // A recalled document only takes answers.
        assert!(apply(&asked, "05", 1, true, "B", "D").is_err());
        assert!(matches!(
            apply(&asked, "15", 1, true, "B", "D"),
            Ok(Outcome::Changed(_))
        ));
    }
}
