#!/bin/sh
set -e
# jouletrace admin API (docs/powercap.md#actuation): steps of at most 100 W, 60 s apart (--powercap-max-step, --powercap-cooldown)
# rack=r1: 509 W per GPU
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 600, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r1: 44800 W for 11 servers"}' http://r1-n00:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 600, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r1: 44800 W for 11 servers"}' http://r1-n01:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 600, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r1: 44800 W for 11 servers"}' http://r1-n02:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 600, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r1: 44800 W for 11 servers"}' http://r1-n03:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 600, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r1: 44800 W for 11 servers"}' http://r1-n04:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 600, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r1: 44800 W for 11 servers"}' http://r1-n05:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 600, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r1: 44800 W for 11 servers"}' http://r1-n06:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 600, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r1: 44800 W for 11 servers"}' http://r1-n07:9464/api/v1/powercap
sleep 60
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 509, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r1: 44800 W for 11 servers"}' http://r1-n00:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 509, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r1: 44800 W for 11 servers"}' http://r1-n01:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 509, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r1: 44800 W for 11 servers"}' http://r1-n02:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 509, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r1: 44800 W for 11 servers"}' http://r1-n03:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 509, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r1: 44800 W for 11 servers"}' http://r1-n04:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 509, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r1: 44800 W for 11 servers"}' http://r1-n05:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 509, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r1: 44800 W for 11 servers"}' http://r1-n06:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 509, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r1: 44800 W for 11 servers"}' http://r1-n07:9464/api/v1/powercap
# rack=r2: 509 W per GPU
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 600, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r2: 44800 W for 11 servers"}' http://r2-n00:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 600, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r2: 44800 W for 11 servers"}' http://r2-n01:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 600, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r2: 44800 W for 11 servers"}' http://r2-n02:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 600, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r2: 44800 W for 11 servers"}' http://r2-n03:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 600, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r2: 44800 W for 11 servers"}' http://r2-n04:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 600, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r2: 44800 W for 11 servers"}' http://r2-n05:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 600, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r2: 44800 W for 11 servers"}' http://r2-n06:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 600, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r2: 44800 W for 11 servers"}' http://r2-n07:9464/api/v1/powercap
sleep 60
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 509, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r2: 44800 W for 11 servers"}' http://r2-n00:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 509, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r2: 44800 W for 11 servers"}' http://r2-n01:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 509, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r2: 44800 W for 11 servers"}' http://r2-n02:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 509, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r2: 44800 W for 11 servers"}' http://r2-n03:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 509, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r2: 44800 W for 11 servers"}' http://r2-n04:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 509, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r2: 44800 W for 11 servers"}' http://r2-n05:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 509, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r2: 44800 W for 11 servers"}' http://r2-n06:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 509, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r2: 44800 W for 11 servers"}' http://r2-n07:9464/api/v1/powercap
# rack=r3: 509 W per GPU
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 600, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r3: 44800 W for 11 servers"}' http://r3-n00:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 600, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r3: 44800 W for 11 servers"}' http://r3-n01:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 600, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r3: 44800 W for 11 servers"}' http://r3-n02:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 600, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r3: 44800 W for 11 servers"}' http://r3-n03:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 600, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r3: 44800 W for 11 servers"}' http://r3-n04:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 600, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r3: 44800 W for 11 servers"}' http://r3-n05:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 600, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r3: 44800 W for 11 servers"}' http://r3-n06:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 600, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r3: 44800 W for 11 servers"}' http://r3-n07:9464/api/v1/powercap
sleep 60
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 509, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r3: 44800 W for 11 servers"}' http://r3-n00:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 509, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r3: 44800 W for 11 servers"}' http://r3-n01:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 509, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r3: 44800 W for 11 servers"}' http://r3-n02:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 509, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r3: 44800 W for 11 servers"}' http://r3-n03:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 509, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r3: 44800 W for 11 servers"}' http://r3-n04:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 509, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r3: 44800 W for 11 servers"}' http://r3-n05:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 509, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r3: 44800 W for 11 servers"}' http://r3-n06:9464/api/v1/powercap
curl -fsS -H "Authorization: Bearer $(cat /var/run/secrets/jouletrace/admin-token)" -d '{"watts": 509, "gpus": [0, 1, 2, 3, 4, 5, 6, 7], "reason": "power budget rack=r3: 44800 W for 11 servers"}' http://r3-n07:9464/api/v1/powercap
