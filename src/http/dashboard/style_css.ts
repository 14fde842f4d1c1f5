/**
 * The dashboard's style sheet: one column on a phone, cards side by side on a wide screen; state
 * colours always come with the state's word.
 *
 * @module
 */

export const STYLE_CSS = `:root {
  color-scheme: light dark;
  --bg: #f4f5f7; --card: #fff; --text: #1c1e21; --muted: #5f6368; --line: #d9dce1;
  --ok: #1e8e3e; --warn: #b06000; --bad: #c5221f; --idle: #5f6368; --accent: #1a73e8;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
}
@media (prefers-color-scheme: dark) {
  :root { --bg: #16181b; --card: #202327; --text: #e8eaed; --muted: #9aa0a6; --line: #3c4043;
    --ok: #81c995; --warn: #fdd663; --bad: #f28b82; --idle: #9aa0a6; --accent: #8ab4f8; }
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--text); font-size: 15px; }
header { display: flex; align-items: center; gap: 12px; padding: 10px 16px;
  background: var(--card); border-bottom: 1px solid var(--line); }
header h1 { font-size: 18px; margin: 0; flex: 1; }
main { padding: 16px; max-width: 1400px; margin: 0 auto; }
h2 { font-size: 15px; color: var(--muted); margin: 24px 0 8px; }
button { font: inherit; padding: 6px 12px; border-radius: 6px; border: 1px solid var(--line);
  background: var(--card); color: var(--text); cursor: pointer; min-height: 36px; }
button:hover { border-color: var(--accent); }
button.danger { color: var(--bad); }
button:disabled { opacity: 0.5; cursor: default; }
.pill { font-size: 13px; padding: 2px 10px; border-radius: 999px; border: 1px solid var(--line); }
.pill[data-state="live"] { color: var(--ok); border-color: var(--ok); }
.pill[data-state="offline"] { color: var(--bad); border-color: var(--bad); }
#sign-in form { display: grid; gap: 8px; max-width: 360px; margin: 48px auto; padding: 20px;
  background: var(--card); border: 1px solid var(--line); border-radius: 10px; }
#sign-in input { font: inherit; padding: 8px; border-radius: 6px; border: 1px solid var(--line);
  background: var(--bg); color: var(--text); }
.error { color: var(--bad); min-height: 1em; margin: 4px 0; }
#summary { color: var(--muted); margin: 0 0 12px; }
#streams { display: grid; gap: 16px; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); }
.stream { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 12px; }
.stream-head { display: flex; gap: 12px; align-items: flex-start; }
.thumb { width: 192px; aspect-ratio: 16 / 9; object-fit: contain; background: #000; border-radius: 6px;
  flex: none; }
.stream-info { flex: 1; min-width: 0; }
.stream-info h3 { margin: 0 0 4px; font-size: 16px; word-break: break-all; }
.facts { color: var(--muted); font-size: 13px; display: flex; flex-wrap: wrap; gap: 4px 14px; }
.stream-actions { margin-top: 8px; }
.destinations { list-style: none; padding: 0; margin: 12px 0 0; display: grid; gap: 8px; }
.destination { border-top: 1px solid var(--line); padding-top: 8px; display: grid; gap: 4px; }
.destination-head { display: flex; flex-wrap: wrap; align-items: center; gap: 8px; }
.destination-name { font-weight: 600; }
.state { font-size: 13px; font-weight: 600; padding: 1px 8px; border-radius: 4px; color: #fff;
  background: var(--idle); }
.state[data-colour="ok"] { background: var(--ok); }
.state[data-colour="warn"] { background: var(--warn); color: #000; }
.state[data-colour="bad"] { background: var(--bad); }
.spark { width: 140px; height: 28px; flex: none; }
.spark polyline { fill: none; stroke: var(--accent); stroke-width: 1.5; }
.spark line { stroke: var(--line); stroke-width: 1; }
.last-error { color: var(--bad); font-size: 13px; word-break: break-word; }
.stream-error { margin: 4px 0 0; }
.stream-error:empty { display: none; }
.extra { color: var(--muted); font-size: 12px; display: flex; flex-wrap: wrap; gap: 2px 12px; }
.destination-actions { display: flex; flex-wrap: wrap; gap: 6px; }
#events { color: var(--muted); font-size: 13px; padding-left: 20px; margin: 0; }
@media (max-width: 600px) {
  main { padding: 8px; }
  #streams { grid-template-columns: 1fr; }
  .stream-head { flex-direction: column; }
  .thumb { width: 100%; }
}
`;
