// The sign-in dialog: asked for by api.js when the bot answers 401 with a bearer challenge. The key goes to
// api.js, which keeps it in this tab's sessionStorage only; "Sign out" forgets it.
import { forgetKey, onKeyNeeded, storedKey } from "./api.js";
import { announce } from "./messages.js";

const $ = (id) => document.getElementById(id);
const dialog = $("signin");
const keyInput = $("signin-key");
const signOut = $("sign-out");

/** Wire the dialog; ``botName()`` names the bot in the question, ``after`` takes the focus on sign-out. */
export function setUpSignIn(botName, after) {
  onKeyNeeded(
    (reason) =>
      new Promise((resolve) => {
        $("signin-why").textContent =
          reason === "refused"
            ? "That key was not accepted. Enter a valid access key for this bot."
            : `${botName()} needs an access key to talk to you.`;
        keyInput.value = "";
        const finish = (value) => {
          $("signin-form").onsubmit = null;
          $("signin-cancel").onclick = null;
          dialog.oncancel = null;
          dialog.close();
          showSignOut();
          resolve(value);
        };
        $("signin-form").onsubmit = (event) => {
          event.preventDefault();
          const value = keyInput.value.trim();
          if (value) finish(value);
        };
        $("signin-cancel").onclick = () => finish(null);
        dialog.oncancel = (event) => {
          event.preventDefault();
          finish(null);
        };
        dialog.showModal();
        keyInput.focus();
      }),
  );
  signOut.addEventListener("click", () => {
    forgetKey();
    signOut.hidden = true;
    announce("Signed out: the access key is forgotten in this tab.");
    after.focus();
  });
  showSignOut();
}

export function signInOpen() {
  return dialog.open;
}

function showSignOut() {
  // shown once a key is in use (the key itself is kept only in this tab's sessionStorage)
  setTimeout(() => {
    signOut.hidden = !storedKey();
  });
}
