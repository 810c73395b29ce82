"use strict";
(function () {
  const messages = {
    invalid: "Invalid username or password.",
    missing: "Enter a username and a password.",
    rate: "Too many failed attempts; wait a minute and try again.",
  };
  const code = new URLSearchParams(location.search).get("error");
  const box = document.getElementById("login-error");
  if (code && box) {
    box.textContent = messages[code] || "Sign-in failed.";
    box.hidden = false;
  }
  try {
    const theme = localStorage.getItem("taskflow-theme");
    if (theme) document.documentElement.dataset.theme = theme;
  } catch (e) { /* storage may be off */ }
})();
