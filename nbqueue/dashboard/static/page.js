// The standalone page of `nbqueue dashboard` (index.html, served at <base>/nbqueue/): the
// panel, with requests relative to the page that carry the _xsrf cookie's token. A module
// of its own rather than an inline script, so the page works under a strict
// Content-Security-Policy (script-src 'self').
import { mountPanel } from './panel.js';

/** The _xsrf cookie the server set with this page: every request echoes it. */
function xsrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)_xsrf=([^;]*)/);
  return match ? decodeURIComponent(match[1]) : '';
}

const request = (path, init) =>
  fetch(path, {
    ...init,
    credentials: 'same-origin',
    headers: {
      ...(init?.headers ?? {}),
      'X-XSRFToken': xsrfToken(),
      'Content-Type': 'application/json',
    },
  });

mountPanel(document.querySelector('main'), { request });
