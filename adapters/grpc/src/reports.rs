//! `lienthong.v1.Reports`: the report of a period over a part of the
//! directory, for the gateway's operators only.
//!
//! The caller is authenticated like every other call ([`Shared::caller`]);
//! `lienthong_reports` then has the core check the operator role
//! (`PERMISSION_DENIED`, logged), reads the period and scope, and computes
//! the report by SQL aggregation. This module only turns the [`Report`]
//! into protobuf.

use std::collections::{BTreeMap, HashMap};

use lienthong_proto::v1 as pb;
use lienthong_reports::{
    self as reports, AgencyRow, Latency, Report, ReportSettings, SummaryRequest,
};

use crate::Shared;

/// `lienthong.v1.Reports`: operators only.
#[derive(Clone)]
pub struct ReportsService {
    shared: Shared,
    settings: ReportSettings,
}

impl ReportsService {
    pub(crate) fn new(shared: Shared, settings: ReportSettings) -> Self {
        ReportsService { shared, settings }
    }
}

#[tonic::async_trait]
impl pb::reports_server::Reports for ReportsService {
    unary!(self.summary(pb::ReportRequest) -> pb::ReportResponse = |gw, caller, r| {
        let ask = SummaryRequest {
            period: r.period,
            agency: r.agency,
            under: r.under,
            province: r.province,
        };
        let report = reports::summary_for(gw, caller, &ask, &self.settings).await?;
        Ok(response(report))
    });
}

/// The core's report as protobuf, field for field.
pub fn response(r: Report) -> pb::ReportResponse {
    pb::ReportResponse {
        period: r.period,
        from: r.from,
        to: r.to,
        scope: r.scope,
        generated_at: r.generated_at,
        as_of: r.as_of,
        accept_within_working_hours: r.accept_within_working_hours,
        agencies: r.agencies.into_iter().map(row).collect(),
        unattributed_refusals: map(r.unattributed_refusals),
        total: Some(row(r.total)),
    }
}

fn row(a: AgencyRow) -> pb::AgencyReport {
    pb::AgencyReport {
        organ_id: a.organ_id,
        name: a.name,
        sent: a.sent,
        received: a.received,
        delivered: a.delivered,
        acknowledged: a.acknowledged,
        refused: a.refused,
        refused_by_reason: map(a.refused_by_reason),
        statuses_received: map(a.statuses_received),
        without_03: a.without_03,
        overdue: a.overdue,
        accept_to_delivery: Some(latency(a.accept_to_delivery)),
        delivery_to_03: Some(latency(a.delivery_to_03)),
        signature_refused: a.signature_refused,
        signatures_verified_share: a.signatures_verified_share,
    }
}

fn latency(l: Latency) -> pb::ReportLatency {
    pb::ReportLatency {
        count: l.count,
        median_seconds: l.median_seconds,
        p95_seconds: l.p95_seconds,
    }
}

fn map(m: BTreeMap<String, u64>) -> HashMap<String, u64> {
    m.into_iter().collect()
}
