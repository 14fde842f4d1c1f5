/**
 * The operator dashboard served at `/`: its files are TypeScript strings, so they ship inside the
 * compiled executable with no `--include` and no read permission, and run with no build step.
 *
 * @module
 */

import { APP_JS } from "./app_js.ts";
import { INDEX_HTML } from "./index_html.ts";
import { STYLE_CSS } from "./style_css.ts";

export { INDEX_HTML };

/** Only our own files, no inline script or style, nothing from elsewhere, never framed. */
export const DASHBOARD_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' blob: data:",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");

/** The files under `/assets/`, by name. */
export const DASHBOARD_ASSETS: Record<string, { type: string; body: string } | undefined> = {
  "app.js": { type: "text/javascript; charset=utf-8", body: APP_JS },
  "style.css": { type: "text/css; charset=utf-8", body: STYLE_CSS },
};
