// The service's token: asked once, kept in localStorage and in a `glimpse_token`
// cookie (so <img> requests for gallery images carry it), sent to the WebSocket as
// ?token=. Only a service started with a token ever answers 401.

const KEY = "glimpse_token";

export function storedToken() {
  return localStorage.getItem(KEY) || "";
}

export function storeToken(token) {
  localStorage.setItem(KEY, token);
  writeCookie(token);
}

/** Put the stored token back into the cookie (a session cookie ends with the browser). */
export function restoreCookie() {
  const token = storedToken();
  if (token) writeCookie(token);
}

function writeCookie(token) {
  document.cookie = `${KEY}=${encodeURIComponent(token)}; path=/; SameSite=Strict`;
}

let asking = null;

/** The token dialog, made on first use (every page shares it; none carries its markup). */
function tokenDialog() {
  let dialog = document.getElementById("token-dialog");
  if (dialog) return dialog;
  dialog = document.createElement("dialog");
  dialog.id = "token-dialog";
  dialog.setAttribute("aria-label", "service token");
  dialog.innerHTML = `<form>
      <h2>Token</h2>
      <p class="reason"></p>
      <input type="text" name="username" value="glimpse" autocomplete="username" hidden>
      <label>token <input type="password" name="token" autocomplete="current-password" required></label>
      <button type="submit" class="primary">Connect</button>
    </form>`;
  document.body.append(dialog);
  return dialog;
}

/**
 * Ask for the token in a dialog; concurrent 401s share one question.
 * @param {string} reason  shown above the field ("this service needs a token", "that token was refused")
 * @param {() => void} counted  called once per question actually shown
 */
export function askToken(reason, counted) {
  if (asking) return asking;
  const dialog = tokenDialog();
  const form = dialog.querySelector("form");
  const input = dialog.querySelector("input[name=token]");
  dialog.querySelector(".reason").textContent = reason;
  input.value = "";
  counted();
  asking = new Promise((resolve) => {
    form.onsubmit = (event) => {
      event.preventDefault();
      const token = input.value.trim();
      if (!token) return;
      storeToken(token);
      dialog.close();
      asking = null;
      resolve(token);
    };
  });
  dialog.showModal();
  input.focus();
  return asking;
}
