/* The demo shop's page: a merchant's checkout as a merchant writes it. It
   asks its own backend for an intent (the backend holds the secret key and
   sets the price), mounts the card field, and confirms with the intent's
   client secret. It never sees the card. */
(function () {
  "use strict";

  var payments = Payments(document.body.dataset.publishableKey);
  var card = payments.elements().create("card");
  var pay = document.getElementById("pay");
  var result = document.getElementById("result");
  var complete = false, busy = false;

  function show(state, text) {
    result.dataset.state = state;
    result.textContent = text;
  }

  function refresh() { pay.disabled = busy || !complete; }

  card.on("change", function (event) {
    complete = event.complete;
    refresh();
  });
  card.mount("#card-element");

  document.getElementById("checkout").addEventListener("submit", function (event) {
    event.preventDefault();
    busy = true;
    refresh();
    show("working", "Paying\u2026");
    fetch("/demo/checkout/intents", {method: "POST"})
      .then(function (response) { return response.json(); })
      .then(function (intent) {
        if (intent.error) return {error: intent.error};
        return payments.confirmCardPayment(intent.client_secret, {payment_method: {card: card}});
      })
      .then(function (outcome) {
        var shown = outcome.paymentIntent || outcome.error.payment_intent;
        result.dataset.intent = shown ? shown.id : "";
        if (outcome.error) {
          var declined = outcome.error.type === "card_error";
          show(declined ? "declined" : "error", (declined ? "Declined: " : "Not paid: ") + outcome.error.message);
        } else if (outcome.paymentIntent.status === "succeeded") {
          show("succeeded", "Payment succeeded (" + outcome.paymentIntent.id + "). Thank you!");
        } else {
          show("error", "The payment is " + outcome.paymentIntent.status + ".");
        }
      }, function () { show("error", "The shop could not be reached. Try again."); })
      .then(function () { busy = false; refresh(); });
  });
})();
