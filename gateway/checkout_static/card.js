/* The card field: runs in the iframe payments.js mounts, on the node's
   origin. It checks the card as the customer types (Luhn, brand, expiry,
   CVC), and on the page's word encrypts it with WebCrypto to the node's
   public key, creates the payment method and confirms the intent. The card
   never leaves this frame except encrypted; the page hears only whether the
   input is complete, the brand, an error's text, and the intent. */
(function () {
  "use strict";

  var TAG = "payments-checkout-v1";
  var settings = new URLSearchParams(window.location.hash.slice(1));
  var KEY = settings.get("key") || "";
  var PARENT = settings.get("origin") || "";
  var SETTLE_TRIES_MAX = 40;
  var SETTLE_EVERY_MS = 250;
  var $ = document.getElementById.bind(document);
  var fields = {number: $("number"), expiry: $("expiry"), cvc: $("cvc"), postal: $("postal")};
  var BRANDS = [
    // [pattern on the first digits, brand, name shown, lengths, CVC length, groups]
    [/^4/, "visa", "Visa", [13, 16, 19], 3, [4, 4, 4, 4, 3]],
    [/^(5[1-5]|222[1-9]|22[3-9]|2[3-6]|27[01]|2720)/, "mastercard", "Mastercard", [16], 3, [4, 4, 4, 4]],
    [/^3[47]/, "amex", "American Express", [15], 4, [4, 6, 5]]
  ];
  var UNKNOWN = [null, "unknown", "", [12, 13, 14, 15, 16, 17, 18, 19], 3, [4, 4, 4, 4, 3]];

  /* ------------------------------------------------------------ checks */

  function digits(text) { return text.replace(/\D/g, ""); }

  function brandOf(number) {
    for (var i = 0; i < BRANDS.length; i++) if (BRANDS[i][0].test(number)) return BRANDS[i];
    return UNKNOWN;
  }

  function luhnValid(number) {
    var total = 0;
    for (var i = 0; i < number.length; i++) {
      var digit = number.charCodeAt(number.length - 1 - i) - 48;
      if (i % 2 === 1) { digit *= 2; if (digit > 9) digit -= 9; }
      total += digit;
    }
    return number.length >= 12 && total % 10 === 0;
  }

  function grouped(number, groups) {
    var parts = [], at = 0;
    for (var i = 0; i < groups.length && at < number.length; i++) { parts.push(number.slice(at, at + groups[i])); at += groups[i]; }
    return parts.join(" ");
  }

  // Each check: null when fine, else [code, message]; `final` when the customer is done with the field.
  function numberProblem(final) {
    var number = digits(fields.number.value), brand = brandOf(number);
    if (!number) return final ? ["incomplete_number", "Your card number is incomplete."] : null;
    var longest = brand[3][brand[3].length - 1];
    var complete = brand[3].indexOf(number.length) >= 0;
    if (number.length > longest) return ["invalid_number", "Your card number is invalid."];
    if (complete && luhnValid(number)) return null;
    // Wrong at a full length (16, or the brand's only one) is wrong now; a shorter Visa may still grow.
    if (complete && (number.length >= 16 || number.length === longest || final)) return ["invalid_number", "Your card number is invalid."];
    return final ? ["incomplete_number", "Your card number is incomplete."] : null;
  }

  function expiryParts() {
    var value = digits(fields.expiry.value);
    return {month: parseInt(value.slice(0, 2), 10), year: 2000 + parseInt(value.slice(2, 4), 10), length: value.length};
  }

  function expiryProblem(final) {
    var expiry = expiryParts();
    if (expiry.length < 4) return final ? ["incomplete_expiry", "Your card's expiration date is incomplete."] : null;
    if (!(expiry.month >= 1 && expiry.month <= 12)) return ["invalid_expiry_month", "Your card's expiration month is invalid."];
    var now = new Date(), year = now.getFullYear(), month = now.getMonth() + 1;
    if (expiry.year < year || (expiry.year === year && expiry.month < month)) return ["invalid_expiry_year_past", "Your card's expiration date is in the past."];
    if (expiry.year > year + 50) return ["invalid_expiry_year", "Your card's expiration year is invalid."];
    return null;
  }

  function cvcProblem(final) {
    var cvc = digits(fields.cvc.value), brand = brandOf(digits(fields.number.value));
    // An unknown brand may have either length.
    if (cvc.length === brand[4] || (brand === UNKNOWN && cvc.length === 4)) return null;
    return final ? ["incomplete_cvc", "Your card's security code is incomplete."] : null;
  }

  function postalProblem(final) {
    return final && !fields.postal.value.trim() ? ["incomplete_zip", "Your postal code is incomplete."] : null;
  }

  var CHECKS = [["number", numberProblem], ["expiry", expiryProblem], ["cvc", cvcProblem], ["postal", postalProblem]];

  // Mark each field, show the first problem, tell the page; returns the first problem.
  function review(finalFields) {
    var first = null;
    CHECKS.forEach(function (check) {
      var problem = check[1](finalFields === true || finalFields[check[0]]);
      fields[check[0]].setAttribute("aria-invalid", problem ? "true" : "false");
      if (problem && !first) first = problem;
    });
    $("error").textContent = first ? first[1] : "";
    var brand = brandOf(digits(fields.number.value));
    $("brand").textContent = brand[2];
    var complete = CHECKS.every(function (check) { return !check[1](true); });
    var empty = CHECKS.every(function (check) { return !fields[check[0]].value; });
    tell({type: "change", complete: complete, empty: empty, brand: brand[1],
          error: first ? {type: "validation_error", code: first[0], message: first[1]} : null});
    return first;
  }

  /* ------------------------------------------------------------ typing */

  var touched = {};

  fields.number.addEventListener("input", function () {
    var number = digits(fields.number.value).slice(0, 19);
    fields.number.value = grouped(number, brandOf(number)[5]);
    review(touched);
  });
  fields.expiry.addEventListener("input", function () {
    var value = digits(fields.expiry.value).slice(0, 4);
    if (value.length === 1 && value > "1") value = "0" + value;
    fields.expiry.value = value.length > 2 ? value.slice(0, 2) + " / " + value.slice(2) : value;
    review(touched);
  });
  fields.cvc.addEventListener("input", function () {
    fields.cvc.value = digits(fields.cvc.value).slice(0, 4);
    review(touched);
  });
  fields.postal.addEventListener("input", function () { review(touched); });
  Object.keys(fields).forEach(function (name) {
    fields[name].addEventListener("blur", function () { if (fields[name].value) { touched[name] = true; review(touched); } });
  });

  /* ------------------------------------------------------------ talking to the page */

  function tell(message) {
    message.tag = TAG;
    window.parent.postMessage(message, PARENT);
  }

  function api(method, path, form) {
    var options = {method: method, headers: {Authorization: "Bearer " + KEY}, credentials: "omit"};
    if (form) {
      options.headers["Content-Type"] = "application/x-www-form-urlencoded";
      options.body = new URLSearchParams(form).toString();
    }
    return fetch(path, options).then(function (response) {
      return response.json().then(function (body) { return body.error ? {error: body.error} : {object: body}; });
    }, function () {
      return {error: {type: "api_connection_error", message: "The payment service could not be reached. Try again."}};
    });
  }

  // The card, encrypted to the node's current public key (RSA-OAEP, SHA-256).
  function encryptedCard() {
    var expiry = expiryParts();
    var card = JSON.stringify({number: digits(fields.number.value), exp_month: expiry.month, exp_year: expiry.year,
                               cvc: digits(fields.cvc.value), postal_code: fields.postal.value.trim()});
    if (!window.crypto || !window.crypto.subtle) return Promise.reject(new Error("no WebCrypto: the card field needs https"));
    return fetch("/checkout/encryption-key", {credentials: "omit"}).then(function (response) { return response.json(); }).then(function (key) {
      return crypto.subtle.importKey("jwk", key.jwk, {name: "RSA-OAEP", hash: "SHA-256"}, false, ["encrypt"]).then(function (publicKey) {
        return crypto.subtle.encrypt({name: "RSA-OAEP"}, publicKey, new TextEncoder().encode(card));
      }).then(function (ciphertext) {
        var bytes = new Uint8Array(ciphertext), text = "";
        for (var i = 0; i < bytes.length; i++) text += String.fromCharCode(bytes[i]);
        return {encryption_key: key.id, encrypted_card: btoa(text)};
      });
    });
  }

  function intentIdOf(clientSecret) {
    var match = /^(pi_[A-Za-z0-9]+)_secret_[A-Za-z0-9_-]+$/.exec(clientSecret || "");
    return match ? match[1] : null;
  }

  function confirm(clientSecret) {
    var problem = review(true);
    if (problem) return Promise.resolve({error: {type: "validation_error", code: problem[0], message: problem[1]}});
    var intentId = intentIdOf(clientSecret);
    return encryptedCard().then(function (sealed) {
      return api("POST", "/v1/elements/payment_methods", sealed);
    }, function () {
      return {error: {type: "validation_error", message: "The card could not be encrypted in this browser."}};
    }).then(function (created) {
      if (created.error) return created;
      var returnUrl = window.location.origin + "/checkout/challenge-complete?" + new URLSearchParams({origin: PARENT}).toString();
      return api("POST", "/v1/payment_intents/" + intentId + "/confirm",
                 {payment_method: created.object.id, client_secret: clientSecret, return_url: returnUrl});
    }).then(function (answer) {
      return answer.error ? {error: answer.error} : {paymentIntent: answer.object};
    });
  }

  // After a challenge the network's answer may take a moment to land: with
  // `settle`, read again while the intent is still waiting on it.
  function retrieve(clientSecret, settle) {
    var path = "/v1/payment_intents/" + intentIdOf(clientSecret) + "?" + new URLSearchParams({client_secret: clientSecret}).toString();
    function attempt(triesLeft) {
      return api("GET", path).then(function (answer) {
        var status = answer.object && answer.object.status;
        if (settle && triesLeft > 0 && (status === "requires_action" || status === "processing")) {
          return new Promise(function (resolve) { setTimeout(resolve, SETTLE_EVERY_MS); }).then(function () { return attempt(triesLeft - 1); });
        }
        return answer.error ? {error: answer.error} : {paymentIntent: answer.object};
      });
    }
    return attempt(settle ? SETTLE_TRIES_MAX : 0);
  }

  window.addEventListener("message", function (event) {
    // Only the page that framed this field, from the origin it declared.
    if (event.source !== window.parent || event.origin !== PARENT) return;
    var data = event.data;
    if (!data || data.tag !== TAG || !intentIdOf(data.clientSecret)) return;
    var work = data.type === "confirm" ? confirm(data.clientSecret) : data.type === "retrieve" ? retrieve(data.clientSecret, data.settle) : null;
    if (work) work.then(function (answer) { tell({type: "reply", id: data.id, answer: answer}); });
  });

  // The declared origin must be the real parent's where the browser says
  // which that is; a field not framed, or without a key, stays inert.
  var ancestors = window.location.ancestorOrigins;
  var framed = window.parent !== window && /^https?:\/\/[^/]+$/.test(PARENT) && /^pk_(test|live)_/.test(KEY);
  if (framed && ancestors && ancestors.length && ancestors[0] !== PARENT) framed = false;
  if (!framed) {
    $("error").textContent = "This card field works only inside a page that mounted it with payments.js.";
    Object.keys(fields).forEach(function (name) { fields[name].disabled = true; });
    return;
  }
  tell({type: "ready"});
})();
