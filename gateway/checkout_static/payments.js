/* payments.js: card payments from a merchant's page, in the manner of Stripe.js.

     const payments = Payments("pk_test_...");
     const card = payments.elements().create("card");
     card.mount("#card-element");
     card.on("change", (event) => { ... event.complete, event.brand, event.error });
     const result = await payments.confirmCardPayment(clientSecret, {payment_method: {card}});
     // result.paymentIntent, or result.error (a decline says why in error.message)

   The card field is an iframe served by the node (the origin this script
   came from): this page never holds the card. The two talk only through
   postMessage; a message is taken only from the expected window and origin.
   A 3-D Secure challenge opens in a modal frame over the page. */
(function () {
  "use strict";

  var TAG = "payments-checkout-v1";
  var script = document.currentScript;
  var NODE = new URL(script.src).origin;
  var REPLY_TIMEOUT_MS = 60000;

  function fail(type, message, code) {
    var error = {type: type, message: message};
    if (code) error.code = code;
    return {error: error};
  }

  function intentIdOf(clientSecret) {
    var match = /^(pi_[A-Za-z0-9]+)_secret_[A-Za-z0-9_-]+$/.exec(clientSecret || "");
    return match ? match[1] : null;
  }

  /* ------------------------------------------------------------ the card element */

  function CardElement(payments, options) {
    this._payments = payments;
    this._options = options;
    this._frame = null;
    this._handlers = {};
    this._pending = {};
    this._next = 1;
    this._ready = null;
    this._onMessage = this._receive.bind(this);
  }

  CardElement.prototype.mount = function (target) {
    var host = typeof target === "string" ? document.querySelector(target) : target;
    if (!host) throw new Error("payments.js: nothing to mount the card element in (" + target + ")");
    if (this._frame) throw new Error("payments.js: this card element is mounted already");
    var frame = document.createElement("iframe");
    // The key and this page's origin go in the fragment: never sent to a server.
    frame.src = NODE + "/checkout/card#" + new URLSearchParams({key: this._payments._key, origin: window.location.origin}).toString();
    frame.title = "Secure card payment input";
    frame.setAttribute("allowtransparency", "true");
    frame.style.cssText = "border: none; width: 100%; height: " + (this._options.height || "190px") + "; display: block;";
    var element = this;
    this._ready = new Promise(function (resolve) { element._readyResolve = resolve; });
    window.addEventListener("message", this._onMessage);
    host.appendChild(frame);
    this._frame = frame;
  };

  CardElement.prototype.on = function (name, handler) {
    (this._handlers[name] = this._handlers[name] || []).push(handler);
    return this;
  };

  CardElement.prototype.destroy = function () {
    window.removeEventListener("message", this._onMessage);
    if (this._frame && this._frame.parentNode) this._frame.parentNode.removeChild(this._frame);
    this._frame = null;
  };

  CardElement.prototype._emit = function (name, event) {
    (this._handlers[name] || []).forEach(function (handler) { handler(event); });
  };

  CardElement.prototype._receive = function (event) {
    // Only the field this element framed, on the node's origin, is heard.
    if (!this._frame || event.source !== this._frame.contentWindow || event.origin !== NODE) return;
    var data = event.data;
    if (!data || data.tag !== TAG) return;
    if (data.type === "ready") {
      this._readyResolve();
      this._emit("ready", {elementType: "card"});
    } else if (data.type === "change") {
      this._emit("change", {elementType: "card", empty: data.empty, complete: data.complete, brand: data.brand, error: data.error || undefined});
    } else if (data.type === "reply" && this._pending[data.id]) {
      var resolve = this._pending[data.id];
      delete this._pending[data.id];
      resolve(data.answer);
    }
  };

  // Ask the field to do something; resolves with its answer ({paymentIntent} or {error}).
  CardElement.prototype._ask = function (type, values) {
    var element = this;
    return this._ready.then(function () {
      return new Promise(function (resolve) {
        var id = element._next++;
        element._pending[id] = resolve;
        element._frame.contentWindow.postMessage(Object.assign({tag: TAG, type: type, id: id}, values), NODE);
        setTimeout(function () {
          if (element._pending[id]) {
            delete element._pending[id];
            resolve(fail("api_connection_error", "The card field did not answer in time."));
          }
        }, REPLY_TIMEOUT_MS);
      });
    });
  };

  /* ------------------------------------------------------------ 3-D Secure */

  // The issuer's challenge in a modal frame; resolves when its return page
  // (on the node) says it is over, or the customer closes it.
  function challenge(url) {
    return new Promise(function (resolve) {
      var overlay = document.createElement("div");
      overlay.style.cssText = "position: fixed; inset: 0; background: rgba(0, 0, 0, 0.45); z-index: 2147483647;"
        + " display: flex; align-items: center; justify-content: center;";
      var dialog = document.createElement("div");
      dialog.setAttribute("role", "dialog");
      dialog.setAttribute("aria-modal", "true");
      dialog.setAttribute("aria-label", "Confirm the payment with your bank");
      dialog.style.cssText = "background: #fff; border-radius: 8px; width: min(32rem, 94vw); height: min(36rem, 90vh);"
        + " display: flex; flex-direction: column; overflow: hidden;";
      var close = document.createElement("button");
      close.type = "button";
      close.textContent = "Cancel authentication";
      close.style.cssText = "align-self: flex-end; margin: 0.5rem;";
      var frame = document.createElement("iframe");
      frame.title = "3-D Secure authentication";
      frame.style.cssText = "border: none; flex: 1; width: 100%;";
      frame.src = url;
      function finish() {
        window.removeEventListener("message", heard);
        if (overlay.parentNode) overlay.parentNode.removeChild(overlay);
        resolve();
      }
      function heard(event) {
        if (event.source !== frame.contentWindow || event.origin !== NODE) return;
        if (event.data && event.data.tag === TAG && event.data.type === "challenge-complete") finish();
      }
      window.addEventListener("message", heard);
      close.addEventListener("click", finish);
      dialog.appendChild(close);
      dialog.appendChild(frame);
      overlay.appendChild(dialog);
      document.body.appendChild(overlay);
      close.focus();
    });
  }

  function outcome(answer) {
    if (answer.error) return {error: answer.error};
    var intent = answer.paymentIntent;
    if (intent.last_payment_error && intent.status === "requires_payment_method") {
      return {error: Object.assign({}, intent.last_payment_error, {payment_intent: intent})};
    }
    if (intent.status === "requires_action") {
      return {error: {type: "invalid_request_error", code: "payment_intent_authentication_failure",
        message: "The payment was not authenticated.", payment_intent: intent}};
    }
    return {paymentIntent: intent};
  }

  /* ------------------------------------------------------------ Payments */

  function Payments(publishableKey) {
    if (!(this instanceof Payments)) return new Payments(publishableKey);
    if (typeof publishableKey !== "string" || !/^pk_(test|live)_[A-Za-z0-9_-]+$/.test(publishableKey)) {
      throw new Error("payments.js needs a publishable key (pk_test_... or pk_live_...), never a secret key.");
    }
    this._key = publishableKey;
  }

  Payments.prototype.elements = function () {
    var payments = this;
    return {
      create: function (type, options) {
        if (type !== "card") throw new Error("payments.js: only the 'card' element exists");
        return new CardElement(payments, options || {});
      }
    };
  };

  Payments.prototype.confirmCardPayment = function (clientSecret, data) {
    var card = data && data.payment_method && data.payment_method.card;
    if (!(card instanceof CardElement) || !card._frame) {
      return Promise.resolve(fail("invalid_request_error", "Pass a mounted card element as payment_method.card."));
    }
    if (!intentIdOf(clientSecret)) {
      return Promise.resolve(fail("invalid_request_error", "Pass the PaymentIntent's client_secret (pi_..._secret_...).", "client_secret_invalid"));
    }
    return card._ask("confirm", {clientSecret: clientSecret}).then(function (answer) {
      var intent = answer.paymentIntent;
      var action = intent && intent.status === "requires_action" && intent.next_action;
      if (!action || action.type !== "redirect_to_url") return outcome(answer);
      var url = new URL(action.redirect_to_url.url);
      if (url.protocol !== "https:" && url.protocol !== "http:") return fail("api_error", "The authentication page's address is not http(s).");
      return challenge(url.href)
        .then(function () { return card._ask("retrieve", {clientSecret: clientSecret, settle: true}); })
        .then(outcome);
    });
  };

  // Read an intent with its client secret, straight from the API (across
  // origins: the API answers CORS as Stripe's does).
  Payments.prototype.retrievePaymentIntent = function (clientSecret) {
    var intentId = intentIdOf(clientSecret);
    if (!intentId) return Promise.resolve(fail("invalid_request_error", "Pass the PaymentIntent's client_secret.", "client_secret_invalid"));
    var url = NODE + "/v1/payment_intents/" + intentId + "?" + new URLSearchParams({client_secret: clientSecret}).toString();
    return fetch(url, {headers: {Authorization: "Bearer " + this._key}, credentials: "omit"})
      .then(function (response) { return response.json(); })
      .then(function (body) { return body.error ? {error: body.error} : {paymentIntent: body}; },
            function () { return fail("api_connection_error", "The payment service could not be reached."); });
  };

  window.Payments = Payments;
})();
