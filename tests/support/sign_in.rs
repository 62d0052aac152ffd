//! Signing in to the console over plain HTTP, as a browser does (shared by
//! the integration tests and the benchmarks): fetch the sign-in form and
//! its cookie, post the token with that form token, keep the session cookie.

/// The value of the `name` cookie a response sets.
pub fn set_cookie(resp: &reqwest::Response, name: &str) -> String {
    let prefix = format!("{name}=");
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| {
            c.strip_prefix(&prefix)
                .map(|rest| rest.split(';').next().unwrap_or_default().to_string())
        })
        .unwrap_or_else(|| panic!("no {name} cookie set"))
}

/// Signs in at `admin_url` with `token` through `client` (which must not
/// follow redirects); the `Cookie` header value to send from then on.
pub async fn sign_in(client: &reqwest::Client, admin_url: &str, token: &str) -> String {
    let form = client
        .get(format!("{admin_url}/console/sign-in"))
        .send()
        .await
        .expect("sign-in page");
    let csrf = set_cookie(&form, "sb_console_signin");
    let signed = client
        .post(format!("{admin_url}/console/sign-in"))
        .header("cookie", format!("sb_console_signin={csrf}"))
        .form(&[("token", token), ("csrf", csrf.as_str())])
        .send()
        .await
        .expect("sign in");
    assert_eq!(signed.status(), 303, "sign-in refused");
    format!("sb_console={}", set_cookie(&signed, "sb_console"))
}
