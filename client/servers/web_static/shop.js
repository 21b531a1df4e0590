// The shop's own script, on the hand-off page only: hand the order to the buyer's SEMPER agent on
// loopback (docs/web.md), then show the outcome it answers. The page learns the deal id, whether the
// deal was satisfied and a link to the delivery; everything else stays in the SEMPER window.
(function () {
  "use strict";
  var button = document.getElementById("semper-pay");
  var data = document.getElementById("semper-request");
  if (!button || !data) { return; }
  var status = document.getElementById("semper-status");
  var result = document.getElementById("semper-result");
  var link = document.getElementById("semper-delivery");
  var agent = button.getAttribute("data-agent");
  var request = JSON.parse(data.textContent);
  var POLL_MS = 500;
  var LIMIT_MS = 10 * 60 * 1000;

  function say(text) { status.textContent = text; }
  function again() { button.disabled = false; }

  function show(s) {
    if (s.outcome === "satisfied") {
      say("SEMPER: deal " + s.deal + " is satisfied.");
      if (typeof s.delivery === "string" && s.delivery.indexOf(window.location.origin + "/") === 0) {
        link.href = s.delivery;
        result.hidden = false;
      }
    } else {
      say("SEMPER: the deal ended " + (s.outcome || s.status) + ". Your SEMPER window says why.");
      again();
    }
  }

  function poll(job, started) {
    if (Date.now() - started > LIMIT_MS) {
      say("No answer from SEMPER in time; your SEMPER window says what happened.");
      again();
      return;
    }
    fetch(agent + "/v1/purchases/" + encodeURIComponent(job))
      .then(function (r) { return r.json(); })
      .then(function (s) {
        if (s.status === "waiting" || s.status === "running") {
          setTimeout(poll, POLL_MS, job, started);
        } else {
          show(s);
        }
      })
      .catch(function () { say("Lost touch with SEMPER; your SEMPER window says what happened."); again(); });
  }

  button.hidden = false;
  button.addEventListener("click", function () {
    button.disabled = true;
    say("Handing the order to SEMPER…");
    fetch(agent + "/v1/purchases", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request)
    })
      .then(function (r) { return r.json().then(function (b) { return [r.status, b]; }); })
      .then(function (answer) {
        if (answer[0] !== 202) {
          say("SEMPER refused: " + (answer[1].message || answer[0]));
          again();
          return;
        }
        say("Check and confirm the order in your SEMPER window.");
        poll(answer[1].job, Date.now());
      })
      .catch(function () { say("Cannot reach SEMPER on this computer: start it with 'semper agent'."); again(); });
  });
}());
