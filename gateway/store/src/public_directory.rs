//! The public directory: the agencies' codes (mã định danh), names,
//! parents and contact details, as the regulation asks them published —
//! and nothing else (no certificates, channel, update times, extra
//! columns, nor anything of the transfer log). Reads only.
//!
//! A search matches the code or the name, ignoring case and Vietnamese
//! diacritics ([`fold`]: "uy ban" finds "Ủy ban"). The database cannot
//! fold names the same way on SQLite and PostgreSQL, and the directory has
//! no folded column, so a search reads the codes and names in pages of
//! [`SCAN_PAGE`] rows, in code order, and folds them here: memory stays
//! bounded by a page whatever the directory's size (tens of thousands of
//! agencies), and only the rows of the page asked for are read whole.

use sea_orm::QueryResult;

use crate::error::{OrDb, Result};
use crate::sql::{Sql, int, text};
use crate::store::Store;
use lienthong_types::text::fold;

/// Codes and names read at once by a search.
pub const SCAN_PAGE: u64 = 5000;

/// One agency as the public sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicAgency {
    pub organ_id: String,
    pub name: String,
    pub parent: Option<String>,
    /// The parent's name; `None` when there is no parent or it is not in
    /// the directory.
    pub parent_name: Option<String>,
    pub address: String,
    pub email: String,
    pub telephone: String,
    pub website: String,
    pub active: bool,
}

/// A page of a search: the agencies found, in code order, and how many
/// were found in all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublicDirectoryPage {
    pub total: u64,
    pub agencies: Vec<PublicAgency>,
}

const COLUMNS: &str = "SELECT a.organ_id, a.name, a.parent, p.name AS parent_name, a.address, \
     a.email, a.telephone, a.website, a.active \
     FROM agencies a LEFT JOIN agencies p ON p.organ_id = a.parent";

fn public_agency(r: &QueryResult) -> Result<PublicAgency> {
    Ok(PublicAgency {
        organ_id: text(r, "organ_id")?,
        name: text(r, "name")?,
        parent: r
            .try_get::<Option<String>>("", "parent")
            .or_db()?
            .filter(|p| !p.is_empty()),
        parent_name: r.try_get::<Option<String>>("", "parent_name").or_db()?,
        address: text(r, "address")?,
        email: text(r, "email")?,
        telephone: text(r, "telephone")?,
        website: text(r, "website")?,
        active: r.try_get::<bool>("", "active").or_db()?,
    })
}

impl Store {
    /// The agencies whose code or name holds `q` (case and diacritics
    /// ignored; every agency when `q` is blank), in code order: `limit` of
    /// them from the `offset`-th, with how many match in all.
    pub async fn public_directory(
        &self,
        q: &str,
        limit: u64,
        offset: u64,
    ) -> Result<PublicDirectoryPage> {
        let folded = fold(q);
        if folded.is_empty() {
            return self.public_directory_all(limit, offset).await;
        }
        self.public_directory_scan(&folded, limit, offset, SCAN_PAGE)
            .await
    }

    /// The search of [`Store::public_directory`] for a folded, non-empty
    /// `folded`, reading `scan_page` codes and names at a time.
    async fn public_directory_scan(
        &self,
        folded: &str,
        limit: u64,
        offset: u64,
        scan_page: u64,
    ) -> Result<PublicDirectoryPage> {
        let scan_page = scan_page.max(1);
        let end = offset.saturating_add(limit);
        let mut total = 0u64;
        let mut wanted: Vec<String> = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut scan = Sql::new(self.backend());
            scan.push("SELECT organ_id, name FROM agencies");
            if let Some(last) = &after {
                scan.push(" WHERE organ_id > ").bind(last.clone());
            }
            scan.push(" ORDER BY organ_id LIMIT ")
                .bind(i64::try_from(scan_page).unwrap_or(i64::MAX));
            let rows = scan.all(self.connection()).await?;
            let n = rows.len() as u64;
            for r in &rows {
                let code = text(r, "organ_id")?;
                let name = text(r, "name")?;
                if fold(&code).contains(folded) || fold(&name).contains(folded) {
                    if total >= offset && total < end {
                        wanted.push(code.clone());
                    }
                    total += 1;
                }
                after = Some(code);
            }
            if n < scan_page {
                break;
            }
        }
        let agencies = self.public_agencies(&wanted).await?;
        Ok(PublicDirectoryPage { total, agencies })
    }

    async fn public_directory_all(&self, limit: u64, offset: u64) -> Result<PublicDirectoryPage> {
        let mut count = Sql::new(self.backend());
        count.push("SELECT COUNT(*) AS n FROM agencies");
        let total = match count.one(self.connection()).await? {
            Some(r) => u64::try_from(int(&r, "n")?).unwrap_or(0),
            None => 0,
        };
        let mut page = Sql::new(self.backend());
        page.push(COLUMNS)
            .push(" ORDER BY a.organ_id LIMIT ")
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .push(" OFFSET ")
            .bind(i64::try_from(offset).unwrap_or(i64::MAX));
        let agencies = page
            .all(self.connection())
            .await?
            .iter()
            .map(public_agency)
            .collect::<Result<Vec<_>>>()?;
        Ok(PublicDirectoryPage { total, agencies })
    }

    /// The agencies `codes` (a page's worth), in code order.
    async fn public_agencies(&self, codes: &[String]) -> Result<Vec<PublicAgency>> {
        if codes.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = Sql::new(self.backend());
        q.push(COLUMNS).push(" WHERE a.organ_id IN (");
        for (i, c) in codes.iter().enumerate() {
            if i > 0 {
                q.push(", ");
            }
            q.bind(c.clone());
        }
        q.push(") ORDER BY a.organ_id");
        q.all(self.connection())
            .await?
            .iter()
            .map(public_agency)
            .collect()
    }

    /// One agency by its exact code, as the public sees it.
    pub async fn public_agency(&self, organ_id: &str) -> Result<Option<PublicAgency>> {
        let mut q = Sql::new(self.backend());
        q.push(COLUMNS)
            .push(" WHERE a.organ_id = ")
            .bind(organ_id.to_owned());
        q.one(self.connection())
            .await?
            .as_ref()
            .map(public_agency)
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::store::WriterId;
    use crate::store::tests::on_postgres;
    use sea_orm::ConnectionTrait;

    const AGENCIES: [(&str, &str, Option<&str>, bool); 5] = [
        ("000.00.00.H35", "Ủy ban nhân dân tỉnh Lai Châu", None, true),
        (
            "000.00.01.H35",
            "Văn phòng Ủy ban nhân dân tỉnh Lai Châu",
            Some("000.00.00.H35"),
            true,
        ),
        (
            "000.00.12.H35",
            "Sở Khoa học và Công nghệ 100%_",
            Some("000.00.00.H35"),
            false,
        ),
        (
            "000.00.31.H35",
            "Uỷ ban nhân dân thành phố Lai Châu",
            Some("000.00.99.H35"),
            true,
        ),
        (
            "000.01.01.G01",
            "Cục Văn thư và Lưu trữ nhà nước",
            None,
            true,
        ),
    ];

    async fn searches(url: &str) -> Result<()> {
        let store = Store::connect(url, WriterId::main()).await?;
        for (code, name, parent, active) in AGENCIES {
            let mut q = Sql::new(store.backend());
            q.push(
                "INSERT INTO agencies (organ_id, name, parent, email, active, updated_at) VALUES (",
            )
            .bind(code)
            .push(", ")
            .bind(name)
            .push(", ")
            .bind(parent.map(str::to_owned))
            .push(", ")
            .bind(format!("{code}@laichau.gov.vn"))
            .push(", ")
            .bind(active)
            .push(", 0)");
            store
                .connection()
                .execute_raw(q.statement())
                .await
                .or_db()?;
        }
        let codes = |p: &PublicDirectoryPage| -> Vec<String> {
            p.agencies.iter().map(|a| a.organ_id.clone()).collect()
        };

        let all = store.public_directory("  ", 2, 1).await?;
        assert_eq!(all.total, 5);
        assert_eq!(codes(&all), ["000.00.01.H35", "000.00.12.H35"]);
        let office = &all.agencies[0];
        assert_eq!(office.parent.as_deref(), Some("000.00.00.H35"));
        assert_eq!(
            office.parent_name.as_deref(),
            Some("Ủy ban nhân dân tỉnh Lai Châu")
        );
        assert_eq!(office.email, "000.00.01.H35@laichau.gov.vn");
        assert!(office.active);
        assert!(!all.agencies[1].active);

        // Without diacritics, whatever the tone mark's place (Ủy / Uỷ).
        for scan_page in [SCAN_PAGE, 1, 2, 3] {
            let p = store
                .public_directory_scan("uy ban", 10, 0, scan_page)
                .await?;
            assert_eq!(
                codes(&p),
                ["000.00.00.H35", "000.00.01.H35", "000.00.31.H35"],
                "scan page {scan_page}"
            );
            assert_eq!(p.total, 3);
            let p = store
                .public_directory_scan("uy ban", 1, 2, scan_page)
                .await?;
            assert_eq!((p.total, codes(&p)), (3, vec!["000.00.31.H35".to_owned()]));
        }
        let p = store
            .public_directory("ỦY BAN NHÂN DÂN TỈNH", 10, 0)
            .await?;
        assert_eq!(codes(&p), ["000.00.00.H35", "000.00.01.H35"]);
        // By code, or part of it, in either case.
        let p = store.public_directory("00.12.h35", 10, 0).await?;
        assert_eq!(codes(&p), ["000.00.12.H35"]);
        let p = store.public_directory("G01", 10, 0).await?;
        assert_eq!(codes(&p), ["000.01.01.G01"]);
        // LIKE's wildcards are plain characters.
        assert_eq!(
            codes(&store.public_directory("100%_", 10, 0).await?),
            ["000.00.12.H35"]
        );
        assert_eq!(store.public_directory("%", 10, 0).await?.total, 1);
        assert_eq!(store.public_directory("_", 10, 0).await?.total, 1);
        let none = store
            .public_directory("không có cơ quan này", 10, 0)
            .await?;
        assert_eq!(none, PublicDirectoryPage::default());
        // Past the last page: the total, no rows.
        let past = store.public_directory("lai chau", 10, 50).await?;
        assert_eq!((past.total, past.agencies.len()), (3, 0));

        // A parent outside the directory: its code, no name.
        let city = store.public_agency("000.00.31.H35").await?.unwrap();
        assert_eq!(city.parent.as_deref(), Some("000.00.99.H35"));
        assert_eq!(city.parent_name, None);
        let top = store.public_agency("000.00.00.H35").await?.unwrap();
        assert_eq!((top.parent, top.parent_name), (None, None));
        assert!(store.public_agency("000.00.99.H35").await?.is_none());
        assert!(store.public_agency("000.00.00.h35").await?.is_none());
        Ok(())
    }

    #[tokio::test]
    async fn searches_by_code_and_folded_name() -> Result<()> {
        let dir = tempfile::tempdir()?;
        searches(&format!("sqlite://{}/d.db?mode=rwc", dir.path().display())).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn searches_by_code_and_folded_name_on_postgres() -> Result<()> {
        on_postgres(
            "public_directory",
            |url| async move { searches(&url).await },
        )
        .await
    }
}
