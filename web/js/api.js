// REST calls to the service: the token on every request, a 401 asks for it (once)
// and retries, an error body {"error": {expected, got, fix, message}} becomes a toast.

import { askToken, storedToken } from "./token.js";
import { toast } from "./toast.js";

export class ApiError extends Error {
  constructor(status, body) {
    super(body.message || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

export class Api {
  /** @param {import("./state.js").Store} store  errors and token prompts are counted there */
  constructor(store) {
    this.store = store;
  }

  get(path, options) { return this.request("GET", path, undefined, options); }
  post(path, body, options) { return this.request("POST", path, body, options); }
  del(path, options) { return this.request("DELETE", path, undefined, options); }

  /**
   * @param {object} [options]  quiet: no toast (background polls while the service is away)
   * @returns {Promise<any>} the JSON body
   */
  async request(method, path, body, { quiet = false } = {}) {
    let refused = false;
    for (;;) {
      let response;
      try {
        response = await fetch(path, this.init(method, body));
      } catch (err) {
        if (!quiet) toast(`${method} ${path}: the service is unreachable`, { fix: "is `glimpse serve` running?" });
        throw err;
      }
      if (response.status === 401) {
        await askToken(refused ? "The service refused that token; try again." : "This service needs its token.",
          () => { this.store.tokenPrompts += 1; });
        refused = true;
        continue;
      }
      const data = await response.json().catch(() => ({}));
      if (response.ok) return data;
      const error = data.error || { message: `HTTP ${response.status}` };
      this.store.error(`${method} ${path}: ${error.message}`);
      if (!quiet) toast(error.message || `${method} ${path} failed (${response.status})`, error);
      throw new ApiError(response.status, error);
    }
  }

  init(method, body) {
    const headers = { Accept: "application/json" };
    const token = storedToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    return { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: "same-origin" };
  }
}
