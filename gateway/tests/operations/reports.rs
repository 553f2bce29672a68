//! `Reports.Summary` over gRPC: an operator reads the figures of what the
//! agencies sent; an agency is refused; a bad period, a bad scope and an
//! unknown agency get their reasons; a period without traffic gives zeros.

use std::collections::HashMap;
use std::time::Duration;

use lienthong_proto::v1::{self as pb, reports_client::ReportsClient};
use lienthong_testkit::*;
use tonic::Code;

/// A client whose TLS certificate is bound as an operator's
/// (`lienthong directory bind-operator`).
async fn operator(gw: &TestGateway) -> Agency {
    gw.operator_grpc("Trung tâm CNTT", "viewer").await
}

async fn summary(
    who: &Agency,
    req: pb::ReportRequest,
) -> Result<pb::ReportResponse, tonic::Status> {
    ReportsClient::new(who.channel())
        .summary(who.request(req))
        .await
        .map(|r| r.into_inner())
}

fn period(p: &str) -> pb::ReportRequest {
    pb::ReportRequest {
        period: p.to_owned(),
        ..Default::default()
    }
}

/// Today in Vietnam (UTC+7), `yyyy-MM-dd`: the day the traffic is counted in.
fn vietnam_today() -> String {
    let t = time::OffsetDateTime::now_utc().to_offset(time::UtcOffset::from_hms(7, 0, 0).unwrap());
    format!("{:04}-{:02}-{:02}", t.year(), t.month() as u8, t.day())
}

fn rows(r: &pb::ReportResponse) -> HashMap<&str, &pb::AgencyReport> {
    r.agencies
        .iter()
        .map(|a| (a.organ_id.as_str(), a))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_reads_the_figures_and_nobody_else_does() {
    let opts = GatewayOptions {
        mtls: true,
        ..Default::default()
    };
    let Some(gw) = TestGateway::start_with("reports_grpc", opts).await else {
        return;
    };
    within(Duration::from_secs(180), "Reports.Summary", async {
        let a = gw.agency(A);
        let b = gw.agency(B);
        let c = gw.agency(C);
        // C sends two documents to B, A one to B and C.
        let first = c
            .send_document(
                &[B],
                "Công văn thứ nhất",
                &[AttachmentSpec::text("cv.txt", "nội dung")],
            )
            .await
            .unwrap();
        c.send_document(&[B], "Công văn thứ hai", &[])
            .await
            .unwrap();
        a.send_document(&[B, C], "Thông báo chung", &[])
            .await
            .unwrap();
        // C's submission to an agency that does not exist is refused.
        let err = c
            .send_document(&["000.00.77.H35"], "Gửi nhầm", &[])
            .await
            .expect_err("unknown recipient");
        assert_eq!(reason_of(&err).as_deref(), Some("UNKNOWN_RECIPIENT"));
        // B takes and acknowledges its three documents and answers C's first
        // with a 03; C takes its one document without acknowledging it.
        let got = b.receive_all(0).await.unwrap();
        assert_eq!(got.len(), 3);
        for d in &got {
            b.ack(&d.delivery_id).await.unwrap();
        }
        b.send_status(C, &first.document().document_id, "03")
            .await
            .unwrap();
        assert_eq!(c.receive_all(0).await.unwrap().len(), 2);

        let op = operator(&gw).await;
        let today = vietnam_today();
        let r = summary(&op, period(&today))
            .await
            .expect("an operator reads reports");
        assert_eq!(r.period, today);
        assert_eq!(
            (r.from.as_str(), r.to.as_str()),
            (today.as_str(), today.as_str())
        );
        assert_eq!(r.scope, "#");
        assert_eq!(r.agencies.len(), 4, "the dev directory's four agencies");
        let by = rows(&r);
        let (ra, rb, rc) = (by[A], by[B], by[C]);
        assert_eq!((ra.sent, ra.received, ra.refused), (1, 0, 0));
        assert_eq!(
            (rb.sent, rb.received, rb.delivered, rb.acknowledged),
            (0, 3, 3, 3),
            "{rb:?}"
        );
        assert_eq!(
            (rc.sent, rc.received, rc.delivered, rc.acknowledged),
            (2, 1, 1, 0),
            "{rc:?}"
        );
        assert_eq!(rc.refused, 1);
        assert_eq!(
            rc.refused_by_reason,
            HashMap::from([("UNKNOWN_RECIPIENT".to_owned(), 1)])
        );
        assert_eq!(rc.statuses_received, HashMap::from([("03".to_owned(), 1)]));
        assert!(rb.statuses_received.is_empty());
        assert_eq!(rc.signatures_verified_share, Some(1.0));
        assert_eq!(rb.signatures_verified_share, None, "B sent no document");
        let d = rb.accept_to_delivery.as_ref().unwrap();
        assert_eq!(d.count, 3);
        assert!(d.median_seconds.is_some() && d.p95_seconds.is_some());
        assert_eq!(rb.delivery_to_03.as_ref().unwrap().count, 1);
        let total = r.total.as_ref().unwrap();
        assert_eq!(
            (
                total.sent,
                total.received,
                total.delivered,
                total.acknowledged,
                total.refused
            ),
            (3, 4, 4, 3, 1)
        );
        assert_eq!(total.statuses_received.get("03"), Some(&1));

        // The month and a province by its code give the same figures.
        let month = &today[..7];
        let m = summary(
            &op,
            pb::ReportRequest {
                period: month.to_owned(),
                province: "H35".to_owned(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(m.scope, "#.H35");
        assert_eq!(m.agencies.len(), 4);
        assert_eq!(m.total, r.total);

        // One agency; an agency and those under it.
        let one = summary(
            &op,
            pb::ReportRequest {
                period: today.clone(),
                agency: B.to_owned(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(one.agencies.len(), 1);
        assert_eq!(one.agencies[0].received, 3);
        let under = summary(
            &op,
            pb::ReportRequest {
                period: format!("{today}..{today}"),
                under: PROVINCE.to_owned(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(under.agencies.len(), 4);
        assert_eq!(under.total.as_ref().unwrap().sent, 3);

        // A period without traffic: zeros, not an error.
        let empty = summary(&op, period("2001-01")).await.expect("zeros");
        assert_eq!(empty.agencies.len(), 4);
        let t = empty.total.unwrap();
        assert_eq!((t.sent, t.received, t.refused), (0, 0, 0));
        assert_eq!(t.accept_to_delivery.unwrap().median_seconds, None);

        // An agency is refused, whatever it asks.
        for who in [&b, &c] {
            let err = summary(who, period(&today))
                .await
                .expect_err("agencies may not");
            assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
            assert_eq!(reason_of(&err).as_deref(), Some("PERMISSION_DENIED"));
            assert_eq!(domain_of(&err).as_deref(), Some("lienthong"));
            assert!(err.message().contains("operators"), "{}", err.message());
        }
        let err = summary(&b, period("không phải kỳ")).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

        // A malformed period says what is accepted.
        for bad in [
            "2026-13",
            "",
            "tháng 11",
            "2026-Q5",
            "2026-11-30..2026-11-01",
        ] {
            let err = summary(&op, period(bad)).await.expect_err(bad);
            assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}: {err:?}");
            assert_eq!(reason_of(&err).as_deref(), Some("MALFORMED"), "{bad:?}");
            assert!(
                err.message().contains("2026-Q4") && err.message().contains("2026-11-24"),
                "{bad:?}: {}",
                err.message()
            );
        }
        // So does a malformed scope.
        for req in [
            pb::ReportRequest {
                period: today.clone(),
                agency: "không-phải-mã".to_owned(),
                ..Default::default()
            },
            pb::ReportRequest {
                period: today.clone(),
                province: "Lai Châu".to_owned(),
                ..Default::default()
            },
            pb::ReportRequest {
                period: today.clone(),
                agency: B.to_owned(),
                under: PROVINCE.to_owned(),
                ..Default::default()
            },
        ] {
            let err = summary(&op, req.clone()).await.expect_err("bad scope");
            assert_eq!(err.code(), Code::InvalidArgument, "{req:?}: {err:?}");
            assert!(
                matches!(
                    reason_of(&err).as_deref(),
                    Some("MALFORMED" | "BAD_IDENTIFIER")
                ),
                "{req:?}: {err:?}"
            );
        }

        // An agency that is not in the directory.
        for req in [
            pb::ReportRequest {
                period: today.clone(),
                agency: "000.00.77.H35".to_owned(),
                ..Default::default()
            },
            pb::ReportRequest {
                period: today.clone(),
                under: "000.00.77.H35".to_owned(),
                ..Default::default()
            },
            pb::ReportRequest {
                period: today.clone(),
                province: "H99".to_owned(),
                ..Default::default()
            },
        ] {
            let err = summary(&op, req.clone()).await.expect_err("unknown");
            assert_eq!(err.code(), Code::NotFound, "{req:?}: {err:?}");
            assert_eq!(reason_of(&err).as_deref(), Some("NOT_FOUND"), "{req:?}");
        }
    })
    .await;
}
