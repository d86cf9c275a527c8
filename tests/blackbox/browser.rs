//! The web chat page in real headless Chromium against the real gateway: connect with a tenant
//! token, chat with the scripted agent, see tool events, stay safe against hostile text.

use serde_json::json;

use crate::cdp::Browser;
use crate::harness::Gateway;
use crate::webchat_page::{WAIT, js, not_pwned, type_and_send, wait_reply};
use crate::{TOKEN_A, env, fakes, two_tenant_config};

#[tokio::test]
async fn web_chat_full_exchange_in_a_real_browser() -> anyhow::Result<()> {
    let fake = fakes::start().await;
    let gw = Gateway::start(&two_tenant_config(&fake.base, ""), &env()).await;
    let browser = Browser::launch().await?;
    browser.navigate(&gw.url("/")).await?;
    assert_eq!(browser.eval("document.title").await?, json!("Chat"));
    browser
        .eval(&format!(
            "document.getElementById('token').value = {}; document.getElementById('connect').click()",
            js(TOKEN_A)
        ))
        .await?;
    browser.wait_for("document.getElementById('status').textContent === 'ready'", WAIT).await?;
    assert_eq!(browser.eval("document.getElementById('tenant').textContent").await?, json!("Alpha Co"));
    let agents = browser.eval("[...document.querySelectorAll('#agent option')].map(o => o.value)").await?;
    assert_eq!(agents, json!(["a-openai", "a-claude", "a-demo", "a-sessions"]), "only the token's tenant's agents");
    browser
        .eval(
            "{ const s = document.getElementById('agent'); s.value = 'a-demo'; s.dispatchEvent(new Event('change')); }",
        )
        .await?;
    assert_eq!(browser.eval("!document.getElementById('scripted-label').hidden").await?, json!(true));

    let hostile = "hi <img src=x onerror=\"window.__pwned=1\">";
    type_and_send(&browser, hostile).await?;
    wait_reply(&browser, &format!("echo: {hostile}")).await?;
    not_pwned(&browser).await?;

    type_and_send(&browser, r#"/tool read {"path":"notes.txt"}"#).await?;
    browser
        .wait_for(
            "document.getElementById('log').dataset.busy === 'false' && document.querySelector('#log .tool-result')",
            WAIT,
        )
        .await?;
    let tool = browser
        .eval("[document.querySelector('#log .tool-call .tool-head').textContent, document.querySelector('#log .tool-result').className]")
        .await?;
    assert!(tool[0].as_str().unwrap_or("").contains("read"), "{tool}");
    assert!(tool[1].as_str().unwrap_or("").contains("tool-result"), "{tool}");

    // The same conversation continues on the OpenAI-backed agent after switching.
    browser
        .eval("{ const s = document.getElementById('agent'); s.value = 'a-openai'; s.dispatchEvent(new Event('change')); }")
        .await?;
    type_and_send(&browser, "via openai").await?;
    wait_reply(&browser, "fake says: via openai").await?;
    let shot = std::env::temp_dir().join("bulkhead-webchat-real.png");
    browser.screenshot(&shot).await?;
    Ok(())
}
