"use strict";
document.getElementById("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = document.getElementById("token").value;
  const answer = await fetch("/ui/session", {
    method: "POST", headers: {Authorization: "Bearer " + token}, credentials: "same-origin"});
  if (answer.status === 204) {
    window.location.assign("/ui/");
  } else {
    document.getElementById("error").textContent = "That token is not this server's.";
  }
});
