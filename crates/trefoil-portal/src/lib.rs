//! The operator portal: a handful of pages the control plane serves at `/`,
//! beside the REST API under `/api/v1`. Every byte is compiled in
//! (`include_str!`), so a mesh with no internet shows its portal; the pages
//! are shells rendered here (navigation, headings, the list of kinds) and
//! one small script fills them from the same API the CLI uses, so the API's
//! validation and optimistic writes guard the portal too.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const STYLE: &str = include_str!("../assets/portal.css");
const SCRIPT: &str = include_str!("../assets/portal.js");
/// The YAML editor (check, diff, confirm, acknowledgements) that CNF
/// Provisioning and Resources share: `{{editor}}` in a page's body.
const EDITOR: &str = include_str!("../assets/editor.html");

/// One page: where it is served, its title in the navigation, its body.
struct Page {
    path: &'static str,
    id: &'static str,
    title: &'static str,
    body: &'static str,
}

const PAGES: [Page; 6] = [
    Page { path: "/", id: "dashboard", title: "Dashboard", body: include_str!("../assets/dashboard.html") },
    Page { path: "/graph", id: "graph", title: "Service Graph", body: include_str!("../assets/graph.html") },
    Page { path: "/rollouts", id: "rollouts", title: "Rollouts", body: include_str!("../assets/rollouts.html") },
    Page { path: "/cnfs", id: "cnfs", title: "CNF Provisioning", body: include_str!("../assets/cnfs.html") },
    Page { path: "/traces", id: "traces", title: "CNF Tracing", body: include_str!("../assets/traces.html") },
    Page { path: "/resources", id: "resources", title: "Resources", body: include_str!("../assets/resources.html") },
];

/// Only this origin's script and style run on a page: no inline script, no
/// third-party fetch, no framing.
const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'";

/// The portal's routes; merged into the control plane's router.
pub fn router() -> Router {
    let mut router = Router::new()
        .route("/portal/portal.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .route("/portal/portal.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }));
    for (index, page) in PAGES.iter().enumerate() {
        router = router.route(page.path, get(move || async move { asset("text/html; charset=utf-8", render(index)) }));
    }
    router
}

fn asset(content_type: &'static str, body: impl Into<String>) -> Response {
    let mut response = body.into().into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Assets change with the binary; revalidating costs one loopback round trip.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// The page at `index` in the shared layout: the navigation marks the
/// current page, and the kinds the store holds fill `{{kinds}}`.
fn render(index: usize) -> String {
    let page = &PAGES[index];
    let nav: String = PAGES
        .iter()
        .map(|p| {
            let current = if p.id == page.id { " aria-current=\"page\"" } else { "" };
            format!("<a href=\"{}\"{current}>{}</a>", p.path, p.title)
        })
        .collect();
    let kinds: String = trefoil_model::resource::KINDS.iter().map(|k| format!("<option value=\"{k}\">{k}</option>")).collect();
    let body = page.body.replace("{{kinds}}", &kinds).replace("{{editor}}", EDITOR);
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Trefoil</title><link rel=\"icon\" href=\"data:,\">\
         <link rel=\"stylesheet\" href=\"/portal/portal.css\"><script src=\"/portal/portal.js\" defer></script></head>\
         <body data-page=\"{id}\"><a class=\"skip\" href=\"#main\">Skip to content</a>\
         <header><span class=\"brand\">Trefoil</span><nav aria-label=\"Portal\">{nav}</nav>\
         <span id=\"health\" role=\"status\" aria-live=\"polite\"></span></header>\
         <main id=\"main\" tabindex=\"-1\"><h1>{title}</h1>{body}</main></body></html>\n",
        title = page.title,
        id = page.id,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_links_every_other_and_marks_itself() {
        for (index, page) in PAGES.iter().enumerate() {
            let html = render(index);
            assert!(html.contains(&format!("data-page=\"{}\"", page.id)), "{}", page.id);
            for other in &PAGES {
                assert!(html.contains(&format!("href=\"{}\"", other.path)), "{} links {}", page.id, other.path);
            }
            assert_eq!(html.matches("aria-current").count(), 1, "{}", page.id);
            assert!(!html.contains("{{"), "{} left a placeholder", page.id);
        }
    }

    #[test]
    fn the_resources_page_offers_every_kind() {
        let html = render(PAGES.iter().position(|p| p.id == "resources").unwrap());
        for kind in trefoil_model::resource::KINDS {
            assert!(html.contains(&format!("<option value=\"{kind}\">")), "{kind}");
        }
    }

    #[test]
    fn both_editing_pages_carry_the_one_editor() {
        for id in ["cnfs", "resources"] {
            let html = render(PAGES.iter().position(|p| p.id == id).unwrap());
            assert_eq!(html.matches("id=\"yaml\"").count(), 1, "{id}");
            assert!(html.contains("id=\"diff\"") && html.contains("id=\"acks\""), "{id}");
        }
    }

    #[test]
    fn nothing_is_fetched_from_another_origin() {
        for text in [STYLE, SCRIPT, EDITOR].into_iter().chain(PAGES.iter().map(|p| p.body)) {
            assert!(!text.contains("http://") && !text.contains("https://"), "an absolute URL in an embedded asset");
        }
    }
}
