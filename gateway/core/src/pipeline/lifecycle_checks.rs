//! What a document's lifecycle allows (recall, update, replace, status
//! notices from its recipients) checked at submission, the deadline sweep,
//! and a document's status as the parties read it. The rules themselves are
//! in [`crate::lifecycle`]; this module applies them to the store.

use lienthong_proto::v1::BusinessType;
use lienthong_types::Route;
use std::collections::HashSet;

use lienthong_proto::v1::{self as pb, Envelope, SignedEnvelope, envelope::Body};
use prost::Message as _;

use crate::error::{Error, Reason, Result};
use crate::lifecycle;
use crate::organ_id::{IdPolicy, OrganId};
use crate::rows::MessageRow;
use crate::store::{EventKind, NewEvent, now_micros};
use crate::text::truncate;
use lienthong_types::timestamp;

use super::{Caller, Gateway, Role};

/// What accepting a message will do to the lifecycle of the document it
/// refers to.
#[derive(Debug, Default)]
pub(super) struct LifecycleEffect {
    pub(super) business_type: i32,
    pub(super) replaces: Option<String>,
    /// A recall: where it goes (every recipient still holding a copy),
    /// instead of the envelope's `to`.
    pub(super) routes: Option<Vec<(String, Route)>>,
    pub(super) withdraw: Vec<(i64, String, Route)>,
    /// For the verification summary.
    pub(super) note: Option<String>,
    /// For the log line: a status's effect on each recipient's state
    /// (before → after); a document sent late.
    pub(super) status_note: Option<String>,
    pub(super) priority: i32,
    pub(super) due_at: Option<i64>,
}

impl LifecycleEffect {
    /// What a document records whatever its lifecycle: its business type,
    /// priority and due time.
    pub(super) fn of_document(body: &Body) -> LifecycleEffect {
        match body {
            Body::Document(doc) => LifecycleEffect {
                business_type: doc.business.as_ref().map(|b| b.r#type).unwrap_or(0),
                priority: i32::try_from(doc.priority).unwrap_or(0),
                due_at: lienthong_types::calendar::parse_date(&doc.due_date)
                    .and_then(|d| d.next_day())
                    .map(lienthong_types::calendar::day_start_micros),
                ..LifecycleEffect::default()
            },
            Body::Status(_) => LifecycleEffect::default(),
        }
    }
}

impl Gateway {
    /// Checks a document's business (recall, update, replace) or a status
    /// notice against the lifecycle of the document it refers to, and says
    /// what accepting it will do.
    pub(super) async fn check_lifecycle(
        &self,
        caller: &Caller,
        from: &OrganId,
        to: &[String],
        body: &Body,
        policy: IdPolicy,
    ) -> Result<LifecycleEffect> {
        let inner = &self.inner;
        let from_exchange = caller.role == Role::Exchange;
        let mut effect = LifecycleEffect::default();
        match body {
            Body::Document(doc) => {
                let bt = doc.business.as_ref().map(|b| b.r#type).unwrap_or(0);
                effect.business_type = bt;
                effect.priority = i32::try_from(doc.priority).unwrap_or(0);
                effect.due_at = lienthong_types::calendar::parse_date(&doc.due_date)
                    .and_then(|d| d.next_day())
                    .map(lienthong_types::calendar::day_start_micros);
                // Decree 30: a document is sent the day it is signed, or the
                // next working day at the latest. Reported, not refused.
                if let Some(promulgated) =
                    lienthong_types::calendar::parse_date(&doc.promulgation_date)
                {
                    let today = lienthong_types::calendar::local_date(now_micros());
                    let late = inner.calendar.working_days_between(promulgated, today);
                    if late > 1 && !from_exchange {
                        effect.status_note = Some(format!(
                            "sent {late} working days after its promulgation date {}: Decree 30/2020/NĐ-CP \
                             (art. 16) asks for the same or the next working day",
                            doc.promulgation_date
                        ));
                    }
                }
                let what = match BusinessType::try_from(bt) {
                    Ok(BusinessType::New) => return Ok(effect),
                    Ok(BusinessType::Recall) => "recall",
                    Ok(BusinessType::Update) => "update",
                    Ok(BusinessType::Replace) => "replacement",
                    Err(_) => {
                        return Err(Error::malformed(format!(
                            "business.type {bt} is not one of 0 (new), 1 (recall), 2 (update), 3 (replace)"
                        )));
                    }
                };
                // edXML names what a replacement replaces in its
                // ReplacementInfoList.
                let target = doc
                    .business
                    .as_ref()
                    .map(|b| {
                        let r = b.replaces.trim();
                        if r.is_empty() {
                            b.replacements
                                .first()
                                .map(|x| x.document_id.trim())
                                .unwrap_or_default()
                        } else {
                            r
                        }
                    })
                    .unwrap_or_default();
                if target.is_empty() {
                    if policy == IdPolicy::Lenient {
                        effect.note = Some(format!("a {what} that names no document it refers to"));
                        return Ok(effect);
                    }
                    return Err(Error::malformed(format!(
                        "a {what} must name the document it refers to in business.replaces (its document_id)"
                    )));
                }
                if target == doc.document_id {
                    return Err(Error::malformed(format!(
                        "a {what} needs a document_id of its own; business.replaces names the document it refers to"
                    )));
                }
                effect.replaces = Some(target.to_owned());
                let Some(original) = inner.store.document(from.as_str(), target).await? else {
                    let others = inner.store.document_senders(target).await?;
                    if let Some(owner) = others.iter().find(|o| o.as_str() != from.as_str()) {
                        return Err(Error::new(
                            Reason::PermissionDenied,
                            format!(
                                "document {target} was sent by {owner}; only its sender may send a {what} of it, and {from} is not its sender"
                            ),
                        ));
                    }
                    if from_exchange {
                        // Overtook its document on the way: kept, and the
                        // lifecycle applies it when the document arrives.
                        effect.note = Some(format!(
                            "a {what} of document {target}, which has not arrived here yet"
                        ));
                        return Ok(effect);
                    }
                    if policy == IdPolicy::Lenient {
                        // edXML producers refer to documents that reached
                        // their recipients some other way: carried, and
                        // the report says so (as for status notices).
                        effect.note = Some(format!(
                            "a {what} of document {target}, which this gateway has not carried"
                        ));
                        return Ok(effect);
                    }
                    return Err(Error::new(
                        Reason::NotFound,
                        format!(
                            "the {what} refers to document {target} of {from}, which this gateway has not carried; check business.replaces"
                        ),
                    ));
                };
                if original.business_type == BusinessType::Recall as i32 {
                    return Err(Error::malformed(format!(
                        "document {target} is itself a recall; a recall cannot be recalled, updated or replaced (send a new document instead)"
                    )));
                }
                let life = self.lifecycle_of(original).await?;
                if let Some(at) = life.recalled_at {
                    return Err(Error::malformed(format!(
                        "document {target} of {from} was recalled on {}: the sender's copy is frozen, so no further {what} of it is accepted",
                        lienthong_types::calendar::format_local(at)
                    )));
                }
                if bt != BusinessType::Recall as i32 {
                    effect.note = Some(format!(
                        "a{} {what} of document {target}",
                        if what == "update" { "n" } else { "" }
                    ));
                    return Ok(effect);
                }
                // A recall goes to every recipient still holding a copy; the
                // copies not yet handed out are withdrawn instead.
                let deliveries = inner.store.deliveries_of(life.document.id).await?;
                if !from_exchange {
                    // The origin knows every recipient: the recall may name
                    // only them (it goes to all of them anyway).
                    if let Some(stranger) = to
                        .iter()
                        .find(|t| !deliveries.iter().any(|d| &d.recipient == *t))
                    {
                        return Err(Error::malformed(format!(
                            "the recall is addressed to {stranger}, which was not a recipient of document {target}; a recall goes to the document's recipients"
                        )));
                    }
                }
                let mut routes = Vec::new();
                for d in deliveries {
                    match d.state.as_str() {
                        "withdrawn" => {}
                        "pending" if d.last_delivered_at.is_none() => {
                            effect.withdraw.push((d.id, d.recipient, d.route))
                        }
                        _ => routes.push((d.recipient, d.route)),
                    }
                }
                effect.note = Some(format!(
                    "a recall of document {target}: sent to {} recipient(s) holding a copy, withdrawn from {} inbox(es) not yet delivered",
                    routes.len(),
                    effect.withdraw.len()
                ));
                effect.routes = Some(routes);
                Ok(effect)
            }
            Body::Status(st) => {
                let Some(original) = inner
                    .store
                    .document(&st.document_from, &st.document_id)
                    .await?
                else {
                    return Ok(effect);
                };
                let code = st.code.as_str();
                let deliveries = inner.store.deliveries_of(original.id).await?;
                let is_recipient = deliveries.iter().any(|d| d.recipient == from.as_str());
                let is_sender = original.sender == from.as_str();
                if (code == "13" && !is_sender) || (code != "13" && !is_recipient) {
                    // From another gateway, the document's recipients are
                    // those of the other gateway too: only the origin knows
                    // them all.
                    if !(from_exchange && code != "13" && !is_sender) {
                        return Err(lifecycle::not_a_party(from.as_str(), code, &original));
                    }
                    effect.note = Some(format!(
                        "status {code} from {from}, a recipient served by another gateway"
                    ));
                    return Ok(effect);
                }
                let life = self.lifecycle_of(original).await?;
                let name = format!(
                    "document {} of {}",
                    life.document.document_id, life.document.sender
                );
                let now = now_micros();
                let recalled = life.recalled_at.is_some();
                let concerned: Vec<String> = if code == "13" {
                    // The recipients it is addressed to; from another
                    // gateway, those this gateway serves.
                    if let Some(stranger) = to
                        .iter()
                        .find(|t| !from_exchange && !life.recipients.contains_key(t.as_str()))
                    {
                        return Err(Error::malformed(format!(
                            "status 13 is addressed to {stranger}, which was not a recipient of {name}; ask only its recipients to give it back"
                        )));
                    }
                    to.iter()
                        .filter(|t| life.recipients.contains_key(t.as_str()))
                        .cloned()
                        .collect()
                } else {
                    vec![from.as_str().to_owned()]
                };
                let mut notes = Vec::new();
                for who in concerned {
                    let Some(r) = life.recipients.get(&who) else {
                        continue;
                    };
                    match lifecycle::apply(
                        &r.as_seen_by_notice(),
                        code,
                        now,
                        recalled,
                        &who,
                        &name,
                    )? {
                        lifecycle::Outcome::Changed(s) => {
                            notes.push(format!("{who}: {} → {}", r.state.label(), s.label()))
                        }
                        lifecycle::Outcome::Repeat => {
                            notes.push(format!("{who}: {} (a repeat)", r.state.label()))
                        }
                        lifecycle::Outcome::Stale => notes.push(format!(
                            "{who}: stays {} (status {code} comes after a later step)",
                            r.state.label()
                        )),
                    }
                }
                effect.status_note = Some(notes.join("; "));
                Ok(effect)
            }
        }
    }

    /// The lifecycle of one document, folded from the records.
    pub(super) async fn lifecycle_of(
        &self,
        document: MessageRow,
    ) -> Result<lifecycle::DocumentLifecycle> {
        lifecycle::of_document(&self.inner.store, document).await
    }

    /// Writes an `overdue` line for each recipient that missed a deadline
    /// since the last look: not accepted (03) within its priority's working
    /// hours, or not completed (06) by the DueDate. Each deadline is logged
    /// once per recipient. Returns how many lines it wrote.
    pub async fn check_deadlines(&self, rules: &lifecycle::Deadlines, now: i64) -> Result<usize> {
        let store = &self.inner.store;
        let calendar = &self.inner.calendar;
        let since = now - rules.watch_days.max(1) * 86_400_000_000;
        let priorities: Vec<i32> = rules.accept_within_hours.keys().copied().collect();
        let mut written = 0;
        for doc in store
            .deadline_candidates(since, now, &priorities, 5000)
            .await?
        {
            let accept_by = rules
                .accept_within_hours
                .get(&doc.priority)
                .map(|h| (calendar.cutoff(now, *h), *h));
            let late_accept = accept_by.is_some_and(|(cut, _)| doc.accepted_at <= cut);
            let past_due = doc.due_at.is_some_and(|d| d <= now);
            if !late_accept && !past_due {
                continue;
            }
            let (sender, message_id, document_id) = (
                doc.sender.clone(),
                doc.message_id.clone(),
                doc.document_id.clone(),
            );
            let due_at = doc.due_at;
            let priority = doc.priority;
            let logged: HashSet<(String, String)> = store
                .overdue_events(&sender, &message_id)
                .await?
                .into_iter()
                .filter_map(|e| Some((e.recipient?, e.reason.unwrap_or_default())))
                .collect();
            let life = self.lifecycle_of(doc).await?;
            for (who, r) in &life.recipients {
                if !r.state.is_open() || life.recalled_at.is_some() {
                    continue;
                }
                let mut lines = Vec::new();
                if let Some((_, hours)) = accept_by.filter(|_| late_accept)
                    && r.state.processing < lifecycle::Processing::Accepted
                {
                    lines.push((
                        lifecycle::OVERDUE_ACCEPT,
                        format!(
                            "document {document_id} ({}) not accepted (03) by {who} within {hours} working hour(s)",
                            lifecycle::priority_name(priority)
                        ),
                    ));
                }
                if past_due {
                    lines.push((
                        lifecycle::OVERDUE_DUE,
                        format!(
                            "document {document_id} not completed (06) by {who} by its due date ({})",
                            due_at.map(|d| lienthong_types::calendar::format_local(d - 1)).unwrap_or_default()
                        ),
                    ));
                }
                for (reason, detail) in lines {
                    if logged.contains(&(who.clone(), reason.to_owned())) {
                        continue;
                    }
                    store
                        .log(NewEvent {
                            kind: EventKind::Overdue,
                            sender: sender.clone(),
                            message_id: message_id.clone(),
                            recipient: Some(who.clone()),
                            reason: Some(reason.to_owned()),
                            detail,
                            actor: None,
                            transport: "gateway".to_owned(),
                        })
                        .await?;
                    self.metrics().document_overdue(reason);
                    written += 1;
                }
            }
        }
        Ok(written)
    }

    /// `Exchange.DocumentStatus`: where document `document_id` of
    /// `doc_from` stands with each recipient. For its sender, its
    /// recipients and operators.
    pub async fn document_status(
        &self,
        caller: &Caller,
        doc_from: &str,
        document_id: &str,
    ) -> Result<pb::DocumentStatusResponse> {
        let store = &self.inner.store;
        let not_found = || {
            Error::new(
                Reason::NotFound,
                format!(
                    "this gateway has carried no document {} from {}; check document_id and from",
                    truncate(document_id, 200),
                    truncate(doc_from, 64)
                ),
            )
        };
        let Some(document) = store.document(doc_from, document_id).await? else {
            return Err(not_found());
        };
        let deliveries = store.deliveries_of(document.id).await?;
        let allowed = caller.is_operator()
            || caller.organ_id == document.sender
            || deliveries.iter().any(|d| d.recipient == caller.organ_id)
            || store.represents(&caller.organ_id, &document.sender).await?;
        if !allowed {
            // Not even whether it exists, to anyone else.
            return Err(not_found());
        }
        let mut links = Vec::new();
        if let Some(target) = &document.replaces {
            let relation = match BusinessType::try_from(document.business_type) {
                Ok(BusinessType::Recall) => "recalls",
                Ok(BusinessType::Update) => "updates",
                _ => "replaces",
            };
            let target_msg = store.document(&document.sender, target).await?;
            links.push(pb::DocumentLink {
                relation: relation.to_owned(),
                document_id: target.clone(),
                message_id: target_msg
                    .as_ref()
                    .map(|m| m.message_id.clone())
                    .unwrap_or_default(),
                at: target_msg.map(|m| timestamp(m.accepted_at)),
            });
        }
        for m in store
            .documents_referring(&document.sender, &document.document_id)
            .await?
        {
            let relation = match BusinessType::try_from(m.business_type) {
                Ok(BusinessType::Recall) => "recalled_by",
                Ok(BusinessType::Update) => "updated_by",
                _ => "replaced_by",
            };
            links.push(pb::DocumentLink {
                relation: relation.to_owned(),
                document_id: m.document_id.clone(),
                message_id: m.message_id.clone(),
                at: Some(timestamp(m.accepted_at)),
            });
        }
        let due_date = Envelope::decode(
            SignedEnvelope::decode(document.signed_envelope.as_slice())
                .map(|s| s.payload)
                .unwrap_or_default(),
        )
        .ok()
        .and_then(|e| match e.body {
            Some(Body::Document(d)) => Some(d.due_date),
            _ => None,
        })
        .unwrap_or_default();
        let life = self.lifecycle_of(document).await?;
        Ok(life.to_pb(links, due_date))
    }
}
