/**
 * The dashboard's page. Plain HTML: the script (app_js.ts) fills it in; nothing inline, so the
 * Content-Security-Policy can forbid inline script and style.
 *
 * @module
 */

export const INDEX_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>Neustream relay</title>
<link rel="stylesheet" href="/assets/style.css">
<script src="/assets/app.js" defer></script>
</head>
<body>
<header>
  <h1>Neustream relay</h1>
  <span id="connection" class="pill" data-state="offline">offline</span>
  <button id="sign-out" type="button" hidden>Sign out</button>
</header>
<main>
  <section id="sign-in" hidden>
    <form id="sign-in-form">
      <label for="token">API token</label>
      <input id="token" name="token" type="password" autocomplete="current-password" required>
      <button type="submit">Sign in</button>
      <p id="sign-in-error" class="error" role="alert"></p>
    </form>
  </section>
  <section id="dashboard" hidden>
    <p id="summary"></p>
    <p id="action-error" class="error" role="alert"></p>
    <div id="streams"></div>
    <p id="empty">No live streams.</p>
    <h2>Recent events</h2>
    <ol id="events"></ol>
  </section>
</main>
</body>
</html>
`;
